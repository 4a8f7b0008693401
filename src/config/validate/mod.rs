//! Turns raw YAML types into the typed [`Config`], collecting every error rather than
//! stopping at the first, so `cutover check` shows the whole list at once.
//!
//! This file owns the entry point, the `Validator` and its generic checks (addresses,
//! names, durations, listeners, flags); backends and routes are in `route`, a route's
//! `shadow:` in `shadow`, its `ramp:` in `ramp`.

mod ramp;
mod route;
mod shadow;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use ipnet::IpNet;

use super::locate::LocationIndex;
use super::model::{
    AccessLogSettings, AccessLogTarget, AdminSettings, BackendSpec, Config, FlagsApiSettings,
    RouteSpec,
};
use super::raw::{RawConfig, RawFlagsFile};
use super::{ConfigError, Loaded};
use crate::flags::{Flag, RawFlag};
use crate::ordered_map::OrderedMap;

const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
const DEFAULT_FLAGS_LISTEN: &str = "0.0.0.0:8016";
const DEFAULT_TOKEN_ENV: &str = "CUTOVER_ADMIN_TOKEN";
const DEFAULT_STATE_FILE: &str = "cutover-state.json";
const DEFAULT_CLIENT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_MAX_CONNECTIONS: u64 = 10_000;
/// Far past what one process can hold open; a larger number is a typo.
const MAX_MAX_CONNECTIONS: u64 = 1_000_000;
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Lines waiting for the access log's writer (a few MB at most).
const DEFAULT_ACCESS_LOG_BUFFER: u64 = 16 * 1024;
const MAX_ACCESS_LOG_BUFFER: u64 = 1024 * 1024;

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
    let client_idle_timeout = v.duration(
        "client_idle_timeout",
        raw.client_idle_timeout.as_deref(),
        DEFAULT_CLIENT_IDLE_TIMEOUT,
    );
    let max_connections = raw.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=MAX_MAX_CONNECTIONS).contains(&max_connections) {
        v.error(
            "max_connections",
            format!("must be between 1 and {MAX_MAX_CONNECTIONS}"),
        );
    }
    let shutdown_timeout = v.duration(
        "shutdown_timeout",
        raw.shutdown_timeout.as_deref(),
        DEFAULT_SHUTDOWN_TIMEOUT,
    );
    let kill_grace = v.duration("kill_grace", raw.kill_grace.as_deref(), DEFAULT_KILL_GRACE);
    let access_log = raw.access_log.as_ref().and_then(|log| {
        let buffer = log.buffer.unwrap_or(DEFAULT_ACCESS_LOG_BUFFER);
        if !(1..=MAX_ACCESS_LOG_BUFFER).contains(&buffer) {
            v.error(
                "access_log.buffer",
                format!("must be from 1 to {MAX_ACCESS_LOG_BUFFER} lines"),
            );
        }
        let target = match log.path.as_str() {
            "stdout" | "-" => AccessLogTarget::Stdout,
            "" => {
                v.error(
                    "access_log.path",
                    "needs `stdout` or a file name".to_owned(),
                );
                return None;
            }
            path => AccessLogTarget::File(base_dir.join(path)),
        };
        Some(AccessLogSettings {
            target,
            buffer: buffer as usize,
        })
    });

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
        // Most often a file caught empty or half-written: serving it would answer every
        // request 404, so it is refused like any other broken file.
        v.error(
            "routes",
            "no routes: at least one route is needed (every request would get 404)".to_owned(),
        );
    }
    for (later, earlier) in route::unreachable_routes(&routes) {
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
        client_idle_timeout,
        max_connections: max_connections as usize,
        shutdown_timeout,
        kill_grace,
        backends,
        routes,
        flags,
        flags_file: raw.flags_file.as_ref().map(|name| base_dir.join(name)),
        access_log,
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
