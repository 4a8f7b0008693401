//! The live configuration: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A reload or a kill builds a complete snapshot off the request path and stores it with a
//! single swap; a request loads it once and uses that one view from start to end. A kill
//! shares everything with the snapshot before it except the kill table. Nothing here takes a
//! lock on the request path.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::bucket::BUCKETS;
use crate::config::Config;
use crate::control::overrides::{Kill, Overrides};
use crate::control::window::WindowStats;
use crate::proxy::routing::{Route, RouteTable};
use crate::proxy::upstream::{Upstream, UpstreamCache};
use crate::telemetry::{self, FlagTelemetry, RouteTelemetry, TargetTelemetry};

/// Monotonic number of a successfully loaded config.
pub type Generation = u64;

/// Window for live stats of a route without a guard.
pub const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

/// Per route state that outlives snapshots (kept by name across reloads).
pub struct RouteRuntime {
    /// Bumped on every kill; long-lived streams to non-stable backends watch it.
    pub kill_signal: watch::Sender<u64>,
}

/// What the request path needs for one backend of one route.
pub struct Target {
    pub telemetry: TargetTelemetry,
    pub window: Arc<WindowStats>,
}

pub struct Snapshot {
    pub generation: Generation,
    pub config: Arc<Config>,
    pub routes: Arc<RouteTable>,
    /// Indexed like `config.backends`.
    pub upstreams: Arc<[Arc<Upstream>]>,
    /// Per route, per target (indexed like `routes.routes[i].targets`).
    pub targets: Arc<[Box<[Target]>]>,
    pub route_telemetry: Arc<[RouteTelemetry]>,
    /// Indexed like `config.flags`.
    pub flag_telemetry: Arc<[FlagTelemetry]>,
    pub runtime: Arc<[Arc<RouteRuntime>]>,
    /// The kill in force per route, from YAML or a runtime override.
    pub kills: Arc<[Option<Kill>]>,
    pub overrides: Arc<Overrides>,
}

pub type LiveSnapshot = ArcSwap<Snapshot>;

/// State kept across snapshots: connection pools, window stats, kill signals.
#[derive(Default)]
pub struct Carried {
    pub upstreams: UpstreamCache,
    windows: HashMap<(Arc<str>, Arc<str>, Duration), Arc<WindowStats>>,
    runtime: HashMap<String, Arc<RouteRuntime>>,
    /// Evaluation counts by flag key and variant name.
    flag_served: HashMap<(String, String), Arc<AtomicU64>>,
}

impl Snapshot {
    pub fn build(
        config: Config,
        generation: Generation,
        carried: &mut Carried,
        overrides: Arc<Overrides>,
    ) -> Snapshot {
        let upstreams: Arc<[Arc<Upstream>]> = carried.upstreams.build(&config.backends).into();
        let backend_names: Vec<Arc<str>> = upstreams.iter().map(|u| u.name.clone()).collect();
        let mut windows = HashMap::new();
        let mut runtimes = HashMap::new();
        let mut targets = Vec::with_capacity(config.routes.len());
        let mut route_telemetry = Vec::with_capacity(config.routes.len());
        let mut runtime = Vec::with_capacity(config.routes.len());
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                let name: Arc<str> = spec.name.as_str().into();
                let window = spec
                    .guard
                    .as_ref()
                    .map_or(DEFAULT_STATS_WINDOW, |g| g.window);
                targets.push(
                    spec.split
                        .iter()
                        .map(|&(backend, _)| {
                            let backend = &backend_names[backend];
                            let key = (name.clone(), backend.clone(), window);
                            let stats = carried
                                .windows
                                .get(&key)
                                .cloned()
                                .unwrap_or_else(|| Arc::new(WindowStats::new(window)));
                            windows.insert(key, stats.clone());
                            Target {
                                telemetry: TargetTelemetry::new(&name, backend),
                                window: stats,
                            }
                        })
                        .collect(),
                );
                route_telemetry.push(RouteTelemetry::new(&name));
                let route_runtime = carried.runtime.get(&spec.name).cloned().unwrap_or_else(|| {
                    Arc::new(RouteRuntime {
                        kill_signal: watch::Sender::new(0),
                    })
                });
                runtimes.insert(spec.name.clone(), route_runtime.clone());
                runtime.push(route_runtime);
                Route {
                    name,
                    matcher: spec.matcher.clone(),
                    targets: Route::targets_from_split(&spec.split),
                    sticky: spec.sticky.clone(),
                    strip_prefix: spec.strip_prefix,
                }
            })
            .collect();
        carried.windows = windows;
        carried.runtime = runtimes;
        let kills = kills_for(&config, &overrides);
        let mut flag_served = HashMap::new();
        let flag_telemetry = config
            .flags
            .iter()
            .map(|(key, flag)| {
                let variants: Vec<&str> = flag.variants.iter().map(|v| v.name.as_str()).collect();
                let served = variants
                    .iter()
                    .map(|&variant| {
                        let id = (key.clone(), variant.to_owned());
                        let count = carried.flag_served.remove(&id).unwrap_or_default();
                        flag_served.insert(id, count.clone());
                        count
                    })
                    .collect();
                FlagTelemetry::new(&key.as_str().into(), &variants, served)
            })
            .collect();
        carried.flag_served = flag_served;
        Snapshot {
            generation,
            config: Arc::new(config),
            routes: Arc::new(RouteTable { routes }),
            upstreams,
            targets: targets.into(),
            route_telemetry: route_telemetry.into(),
            flag_telemetry,
            runtime: runtime.into(),
            kills,
            overrides,
        }
    }

    /// The same config with other runtime overrides.
    pub fn with_overrides(&self, overrides: Arc<Overrides>) -> Snapshot {
        Snapshot {
            generation: self.generation,
            config: self.config.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            targets: self.targets.clone(),
            route_telemetry: self.route_telemetry.clone(),
            flag_telemetry: self.flag_telemetry.clone(),
            runtime: self.runtime.clone(),
            kills: kills_for(&self.config, &overrides),
            overrides,
        }
    }

    pub fn route_index(&self, name: &str) -> Option<usize> {
        self.config.routes.iter().position(|r| r.name == name)
    }

    /// Effective share of each backend of route `index`, in basis points.
    pub fn effective_split(&self, index: usize) -> Vec<(usize, u32)> {
        let spec = &self.config.routes[index];
        spec.split
            .iter()
            .map(|&(backend, share)| {
                let effective = match (self.kills[index].is_some(), backend == spec.stable) {
                    (false, _) => share,
                    (true, true) => BUCKETS,
                    (true, false) => 0,
                };
                (backend, effective)
            })
            .collect()
    }

    /// Publishes the gauges that describe this snapshot.
    pub fn export_gauges(&self) {
        telemetry::config_generation(self.generation);
        for (index, spec) in self.config.routes.iter().enumerate() {
            for (backend, share) in self.effective_split(index) {
                telemetry::route_weight(&spec.name, &self.config.backends[backend].name, share);
            }
            telemetry::route_killed(&spec.name, self.kills[index].is_some());
        }
    }
}

fn kills_for(config: &Config, overrides: &Overrides) -> Arc<[Option<Kill>]> {
    config
        .routes
        .iter()
        .map(|spec| {
            if spec.kill {
                Some(Kill::in_config())
            } else {
                overrides.routes.get(&spec.name).cloned()
            }
        })
        .collect()
}
