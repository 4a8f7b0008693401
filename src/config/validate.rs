//! Turns raw YAML types into the typed [`Config`], collecting every error rather than
//! stopping at the first, so `cutover check` shows the whole list at once.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;

use super::locate::LocationIndex;
use super::model::{AdminSettings, BackendSpec, Config, FlagsApiSettings, GuardSpec, RouteSpec};
use super::raw::{RawBackend, RawConfig, RawFlagsFile, RawGuard, RawMatch, RawRoute, RawSticky};
use super::{ConfigError, Loaded};
use crate::bucket::{basis_points, format_percent, BUCKETS};
use crate::flags::{Flag, RawFlag};
use crate::ordered_map::OrderedMap;
use crate::proxy::routing::{HostMatch, Matcher, PathMatch, StickySource};

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_FLAGS_LISTEN: &str = "0.0.0.0:8016";
const DEFAULT_TOKEN_ENV: &str = "CUTOVER_ADMIN_TOKEN";
const DEFAULT_STATE_FILE: &str = "cutover-state.json";
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_GUARD_MIN_REQUESTS: u64 = 20;
const DEFAULT_GUARD_WINDOW: Duration = Duration::from_secs(30);

struct Validator<'a> {
    file: &'a Path,
    /// Where to find each error's location: the field path of the offending YAML node.
    locate_at: Vec<String>,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

/// The `flags_file` a config names.
pub enum FlagsFile<'a> {
    /// It cannot be used (unreadable, or the config itself): reported at `flags_file`.
    Unusable(String),
    /// Its text and what parsing it gave; errors belong to that file.
    Read {
        path: &'a Path,
        text: &'a str,
        parsed: Result<RawFlagsFile, ConfigError>,
    },
}

/// `text` is the file's content; it is read again only to locate errors, if there are any.
pub fn validate(
    raw: RawConfig,
    file: &Path,
    text: &str,
    flags_file: Option<FlagsFile<'_>>,
) -> Loaded {
    let mut v = Validator::new(file);

    let listen = v.socket_addr("listen", raw.listen.as_deref(), DEFAULT_LISTEN);
    let admin = AdminSettings {
        listen: v.socket_addr(
            "admin.listen",
            raw.admin.listen.as_deref(),
            DEFAULT_ADMIN_LISTEN,
        ),
        token_env: v.env_name(
            "admin.token_env",
            raw.admin.token_env.as_deref(),
            DEFAULT_TOKEN_ENV,
        ),
    };
    let flags_api = raw.flags_api.as_ref().map(|api| FlagsApiSettings {
        listen: v.socket_addr(
            "flags_api.listen",
            api.listen.as_deref(),
            DEFAULT_FLAGS_LISTEN,
        ),
        token_env: api
            .token_env
            .as_deref()
            .map(|name| v.env_name("flags_api.token_env", Some(name), "")),
    });
    v.distinct_listeners(listen, &admin, flags_api.as_ref());

    let base_dir = file.parent().unwrap_or(Path::new("."));
    let state_file = base_dir.join(raw.state_file.as_deref().unwrap_or(DEFAULT_STATE_FILE));
    let trusted_proxies = raw
        .trusted_proxies
        .iter()
        .enumerate()
        .filter_map(|(i, cidr)| v.ip_net(&format!("trusted_proxies[{i}]"), cidr))
        .collect();
    let client_header_timeout = v.duration(
        "client_header_timeout",
        raw.client_header_timeout.as_deref(),
        DEFAULT_CLIENT_HEADER_TIMEOUT,
    );
    let shutdown_timeout = v.duration(
        "shutdown_timeout",
        raw.shutdown_timeout.as_deref(),
        DEFAULT_SHUTDOWN_TIMEOUT,
    );
    let kill_grace = v.duration("kill_grace", raw.kill_grace.as_deref(), DEFAULT_KILL_GRACE);

    let backends: Vec<BackendSpec> = raw
        .backends
        .0
        .iter()
        .filter_map(|(name, backend)| v.backend(name, backend))
        .collect();
    // Routes resolve names against every declared backend, valid or not, so a bad URL is
    // reported once and not again as "unknown backend" in each route.
    let declared: Vec<&str> = raw.backends.0.iter().map(|(n, _)| n.as_str()).collect();
    let mut routes: Vec<RouteSpec> = Vec::new();
    let mut names = HashSet::with_capacity(raw.routes.len());
    for (i, route) in raw.routes.iter().enumerate() {
        let path = format!("routes[{i}]");
        if !names.insert(route.name.as_str()) {
            v.error(
                &format!("{path}.name"),
                format!("duplicate route name {:?}", route.name),
            );
        }
        if let Some(spec) = v.route(&path, route, &declared, &backends) {
            routes.push(spec);
        }
    }
    if raw.routes.is_empty() {
        v.warnings
            .push("no routes: every proxied request will get 404".to_owned());
    }
    for (later, earlier) in shadowed_routes(&routes) {
        v.warnings.push(format!(
            "route {:?} can never match: route {:?} before it matches every request it would",
            routes[later].name, routes[earlier].name
        ));
    }
    let mut flags = v.flags(&raw.flags);
    let mut file_errors = Vec::new();
    match flags_file {
        None => {}
        Some(FlagsFile::Unusable(message)) => v.error("flags_file", message),
        Some(FlagsFile::Read {
            parsed: Err(error), ..
        }) => file_errors.push(error),
        Some(FlagsFile::Read {
            parsed: Ok(extra),
            path,
            text: flags_text,
        }) => {
            let mut fv = Validator::new(path);
            let extra = extra.flags.unwrap_or_else(|| {
                fv.error(
                    "flags",
                    "missing: a flags file holds a `flags:` map (`flags: {}` for none), so an emptied file never removes every flag".to_owned(),
                );
                OrderedMap::default()
            });
            for (key, _) in &extra.0 {
                if flags.iter().any(|(k, _)| k == key) {
                    fv.error(
                        &format!("flags.{key}"),
                        format!("flag {key:?} is also defined in {}", file.display()),
                    );
                }
            }
            flags.extend(fv.flags(&extra));
            v.warnings.append(&mut fv.warnings);
            file_errors = fv.located_errors(flags_text);
        }
    }

    if !v.errors.is_empty() || !file_errors.is_empty() {
        let mut errors = v.located_errors(text);
        errors.extend(file_errors);
        return Err(errors);
    }
    Ok(Config {
        listen,
        admin,
        flags_api,
        state_file,
        trusted_proxies,
        client_header_timeout,
        shutdown_timeout,
        kill_grace,
        backends,
        routes,
        flags,
        flags_file: raw.flags_file.as_ref().map(|name| base_dir.join(name)),
        warnings: v.warnings,
    })
}

impl<'a> Validator<'a> {
    fn new(file: &'a Path) -> Validator<'a> {
        Validator {
            file,
            locate_at: Vec::new(),
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The errors with their locations in `text`, which is parsed again only now.
    fn located_errors(mut self, text: &str) -> Vec<ConfigError> {
        if !self.errors.is_empty() {
            let index = LocationIndex::build(text);
            for (error, at) in self.errors.iter_mut().zip(&self.locate_at) {
                error.location = index.find(at);
            }
        }
        self.errors
    }

    /// Compiles a `flags:` map, reporting errors under `flags.<key>`.
    fn flags(&mut self, raw: &OrderedMap<RawFlag>) -> Vec<(String, Flag)> {
        let mut flags = Vec::with_capacity(raw.0.len());
        for (key, raw_flag) in &raw.0 {
            let path = format!("flags.{key}");
            let name_ok = self.name(&path, "flag", key);
            match crate::flags::compile(key, raw_flag) {
                Ok(flag) if name_ok => flags.push((key.clone(), flag)),
                Ok(_) => {}
                Err(errors) => {
                    for error in errors {
                        let at = if error.path.is_empty() {
                            path.clone()
                        } else {
                            format!("{path}.{}", error.path)
                        };
                        self.error(&at, error.message);
                    }
                }
            }
        }
        flags
    }

    fn error(&mut self, path: &str, message: String) {
        self.error_at(path, path, message);
    }

    /// An error shown under `path` but located at `at` (e.g. the offending map key).
    fn error_at(&mut self, path: &str, at: &str, message: String) {
        self.locate_at.push(at.to_owned());
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            location: None,
            path: path.to_owned(),
            message,
        });
    }

    fn socket_addr(&mut self, path: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse() {
            Ok(addr) => addr,
            Err(_) => {
                self.error(
                    path,
                    format!("{text:?} is not an address like 127.0.0.1:8080 or [::1]:8080"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    fn env_name(&mut self, path: &str, value: Option<&str>, default: &str) -> String {
        let name = value.unwrap_or(default);
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !valid {
            self.error(
                path,
                format!("{name:?} is not an environment variable name"),
            );
        }
        name.to_owned()
    }

    fn distinct_listeners(
        &mut self,
        proxy: SocketAddr,
        admin: &AdminSettings,
        flags: Option<&FlagsApiSettings>,
    ) {
        if proxy == admin.listen && proxy.port() != 0 {
            self.error(
                "admin.listen",
                format!("{proxy} is also the proxy listener"),
            );
        }
        if let Some(flags) = flags {
            if flags.listen.port() != 0 && (flags.listen == proxy || flags.listen == admin.listen) {
                self.error(
                    "flags_api.listen",
                    format!("{} is already used by another listener", flags.listen),
                );
            }
        }
    }

    fn ip_net(&mut self, path: &str, text: &str) -> Option<IpNet> {
        if let Ok(net) = text.parse::<IpNet>() {
            return Some(net);
        }
        if let Ok(ip) = text.parse::<IpAddr>() {
            return Some(IpNet::from(ip));
        }
        self.error(
            path,
            format!("{text:?} is not an address or CIDR like 10.0.0.0/8"),
        );
        None
    }

    fn duration(&mut self, path: &str, value: Option<&str>, default: Duration) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.error(path, "must be greater than zero".to_owned());
                default
            }
            Err(_) => {
                self.error(
                    path,
                    format!("{text:?} is not a duration like 500ms, 30s or 5m"),
                );
                default
            }
        }
    }

    fn name(&mut self, path: &str, kind: &str, name: &str) -> bool {
        // Any printable text: names reach logs, labels, URLs and the status page, each of
        // which escapes them, but a control character or edge space would be misread. `.`
        // and `..` would be dot segments in admin API paths (a browser turns
        // `/api/routes/../kill` into `/api/kill`), and the Prometheus exporter drops a `\`
        // before a quote, so two names could share one series.
        let valid = !name.is_empty()
            && name.chars().count() <= 128
            && !name
                .chars()
                .any(|c| c.is_control() || c == '\\' || is_invisible_format(c))
            && name.trim() == name
            && name != "."
            && name != "..";
        if !valid {
            self.error(
                path,
                format!(
                    "{kind} name {name:?} must be 1-128 characters, not \".\" or \"..\", without control characters, backslashes or leading or trailing spaces"
                ),
            );
        }
        valid
    }

    fn backend(&mut self, name: &str, raw: &RawBackend) -> Option<BackendSpec> {
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
            http2: raw.http2,
        })
    }

    fn route(
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
fn shadowed_routes(routes: &[RouteSpec]) -> Vec<(usize, usize)> {
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

/// Invisible formatting characters (soft hyphen, zero-width, bidirectional controls): they
/// make a name read as another.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}'
    )
}
