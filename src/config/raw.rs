//! Serde types that mirror the YAML one to one. Nothing outside `config` sees them: the
//! validator turns them into the typed model, so the request path never touches raw config.

use serde::Deserialize;

use crate::ordered_map::OrderedMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub listen: Option<String>,
    #[serde(default)]
    pub admin: RawAdmin,
    pub flags_api: Option<RawFlagsApi>,
    pub state_file: Option<String>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub client_header_timeout: Option<String>,
    pub client_idle_timeout: Option<String>,
    pub max_connections: Option<u64>,
    pub shutdown_timeout: Option<String>,
    pub kill_grace: Option<String>,
    #[serde(default)]
    pub backends: OrderedMap<RawBackend>,
    #[serde(default)]
    pub routes: Vec<RawRoute>,
    #[serde(default)]
    pub flags: OrderedMap<crate::flags::RawFlag>,
    /// A second file with more flags, so application teams can own them apart from routes.
    pub flags_file: Option<String>,
    pub access_log: Option<RawAccessLog>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAccessLog {
    /// `stdout`, or a file relative to the config file.
    pub path: String,
    /// Lines held for the writer before new ones are dropped.
    pub buffer: Option<u64>,
}

/// A `flags_file`: the same `flags:` map as in the main file, and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlagsFile {
    /// Required: an emptied or truncated file must not silently remove every flag.
    pub flags: Option<OrderedMap<crate::flags::RawFlag>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFlagsApi {
    pub listen: Option<String>,
    pub token_env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackend {
    pub url: String,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub read_timeout: Option<String>,
    #[serde(default)]
    pub http2: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    pub split: OrderedMap<f64>,
    pub stable: Option<String>,
    pub sticky: Option<RawSticky>,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub kill: bool,
    pub guard: Option<RawGuard>,
    #[serde(default)]
    pub fallback: bool,
    pub shadow: Option<RawShadow>,
    pub ramp: Option<RawRamp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRamp {
    pub to: String,
    pub steps: Vec<f64>,
    pub every: String,
    #[serde(default)]
    pub gate: RawGate,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub min_requests: Option<u64>,
    pub max_error_rate: Option<f64>,
    pub max_latency_ratio: Option<f64>,
    pub max_mismatch_rate: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    pub to: String,
    pub percent: Option<f64>,
    pub methods: Option<Vec<String>>,
    pub max_body: Option<RawSize>,
    pub timeout: Option<String>,
    pub max_inflight: Option<u64>,
    #[serde(default)]
    pub compare: RawCompare,
    pub samples: Option<u64>,
}

/// A size in bytes: a number, or text with a unit (`1MiB`, `512KiB`, `10kB`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCompare {
    #[serde(default)]
    pub ignore_headers: Vec<String>,
    #[serde(default)]
    pub ignore_json: Vec<String>,
    pub noise: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub path_prefix: Option<String>,
    pub path_exact: Option<String>,
    pub host: Option<String>,
    pub methods: Option<Vec<String>>,
    pub headers: Option<OrderedMap<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSticky {
    pub header: Option<String>,
    pub cookie: Option<String>,
    pub query: Option<String>,
    #[serde(default)]
    pub client_ip: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    pub max_error_rate: f64,
    pub min_requests: Option<u64>,
    pub window: Option<String>,
}
