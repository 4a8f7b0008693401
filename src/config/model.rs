//! The validated, typed configuration: every value checked, every default filled in, every
//! name resolved to an index. Building a snapshot from it cannot fail.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::uri::Authority;
use ipnet::IpNet;

use crate::flags::Flag;
use crate::proxy::routing::{Matcher, StickySource};

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin: AdminSettings,
    pub flags_api: Option<FlagsApiSettings>,
    pub state_file: PathBuf,
    pub trusted_proxies: Vec<IpNet>,
    pub client_header_timeout: Duration,
    /// How long a client connection may sit with no request in progress.
    pub client_idle_timeout: Duration,
    /// Open connections per listener; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    pub shutdown_timeout: Duration,
    pub kill_grace: Duration,
    /// In file order; routes refer to them by index.
    pub backends: Vec<BackendSpec>,
    /// In file order: the first match wins.
    pub routes: Vec<RouteSpec>,
    /// Feature flags by key, in file order.
    /// Flags from the config file, then those from `flags_file`.
    pub flags: Vec<(String, Flag)>,
    /// Where more flags come from, resolved against the config file's directory.
    pub flags_file: Option<PathBuf>,
    /// One JSON line per proxied request, when set.
    pub access_log: Option<AccessLogSettings>,
    /// Things that are allowed but probably not meant, e.g. a route that can never match.
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessLogSettings {
    pub target: AccessLogTarget,
    /// Lines held for the writer; past this, new ones are dropped and counted.
    pub buffer: usize,
}

/// Where access log lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// Resolved against the config file's directory; reopened on SIGUSR1.
    File(PathBuf),
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    /// Name of the environment variable holding the bearer token.
    pub token_env: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlagsApiSettings {
    pub listen: SocketAddr,
    pub token_env: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendSpec {
    pub name: String,
    /// The URL as written, for display.
    pub url: String,
    pub authority: Authority,
    /// Path prefix from the URL, without a trailing slash ("" for none).
    pub base_path: String,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// Longest wait between two reads of a response body, once its head arrived.
    pub read_timeout: Duration,
    /// Speak HTTP/2 with prior knowledge (h2c) to this backend.
    pub http2: bool,
}

#[derive(Clone, Debug)]
pub struct RouteSpec {
    pub name: String,
    pub matcher: Matcher,
    /// `(backend index, basis points)`, the stable backend first, then the others in file
    /// order. Basis points sum to 10 000. This order defines the bucket ranges.
    pub split: Vec<(usize, u32)>,
    /// Backend index of the stable backend (also `split[0].0`).
    pub stable: usize,
    pub sticky: Option<StickySource>,
    pub strip_prefix: bool,
    pub kill: bool,
    pub guard: Option<GuardSpec>,
    pub fallback: bool,
    pub shadow: Option<ShadowSpec>,
    pub ramp: Option<RampSpec>,
}

/// `ramp:` on a route: `to`'s share raised step by step while its gate holds.
#[derive(Clone, Debug, PartialEq)]
pub struct RampSpec {
    /// Backend index of the backend ramped up (also `split[1].0`).
    pub to: usize,
    pub plan: crate::schedule::Plan,
}

/// `shadow:` on a route: copies of its requests to a candidate, answers compared.
#[derive(Clone, Debug)]
pub struct ShadowSpec {
    /// Backend index of the candidate.
    pub to: usize,
    /// Basis points of eligible requests copied, by their bucket.
    pub share: u32,
    pub methods: Vec<http::Method>,
    /// Largest request body copied, and largest response body compared whole.
    pub max_body: usize,
    /// Longest a copy may take, from sending it to the end of the candidate's body.
    pub timeout: Duration,
    pub max_inflight: usize,
    pub compare: crate::shadow::verdict::Settings,
    /// Backend index of a second stable instance whose answers teach the noise.
    pub noise: Option<usize>,
    /// Mismatches kept for the diffs API.
    pub samples: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GuardSpec {
    /// Percent, 0–100.
    pub max_error_rate: f64,
    pub min_requests: u64,
    pub window: Duration,
}

impl Config {
    /// No routes, no flags, nothing bound: the value before the first load.
    pub fn empty() -> Config {
        let unbound = SocketAddr::from(([127, 0, 0, 1], 0));
        Config {
            listen: unbound,
            admin: AdminSettings {
                listen: unbound,
                token_env: String::new(),
            },
            flags_api: None,
            state_file: PathBuf::new(),
            trusted_proxies: Vec::new(),
            client_header_timeout: Duration::ZERO,
            client_idle_timeout: Duration::ZERO,
            max_connections: 0,
            shutdown_timeout: Duration::ZERO,
            kill_grace: Duration::ZERO,
            backends: Vec::new(),
            routes: Vec::new(),
            flags: Vec::new(),
            flags_file: None,
            access_log: None,
            warnings: Vec::new(),
        }
    }

    pub fn backend(&self, index: usize) -> &BackendSpec {
        &self.backends[index]
    }
}
