//! The live configuration: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A reload or a kill builds a complete snapshot off the request path and stores it with a
//! single swap; a request loads it once and uses that one view from start to end. Each route
//! is compiled into one [`LiveRoute`]. State that must outlive a snapshot (connection pools,
//! window stats, kill signals, flag counts) is [`Carried`] from one build to the next by name.
//! Nothing here takes a lock on the request path.

mod route;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::bucket::BUCKETS;
use crate::config::{Config, RouteSpec};
use crate::control::guard::Guard;
use crate::control::overrides::{flag_ramp_of, ramp_of, Kill, Overrides};
use crate::control::window::WindowStats;
use crate::flags::Flag;
use crate::proxy::routing::RequestHead;
use crate::proxy::upstream::UpstreamCache;
use crate::shadow::{LiveShadow, ShadowState};
use crate::telemetry::{self, FlagTelemetry, RouteTelemetry, TargetTelemetry};

use route::{strip_len, upper_buckets};
pub use route::{LiveRoute, LiveTarget, RouteRuntime};

/// A shadow's state is kept by route, candidate and noise instance.
type ShadowKey = (Arc<str>, Arc<str>, Option<Arc<str>>);

/// Monotonic number of a successfully loaded config.
pub type Generation = u64;

/// Window for live stats of a route without a guard.
pub const DEFAULT_STATS_WINDOW: Duration = Duration::from_secs(60);

pub struct Snapshot {
    pub generation: Generation,
    /// Settings outside the routes (listeners, flags, `kill_grace`…), for whoever needs them.
    pub config: Arc<Config>,
    /// In file order: the first match wins.
    pub routes: Arc<[LiveRoute]>,
    /// Indexed like `config.flags`.
    pub flag_telemetry: Arc<[FlagTelemetry]>,
    /// Indexed like `config.flags`: the flag with the rollout its ramp gives now, for flags
    /// whose ramp is in force; `None` for the others, which serve the YAML's.
    pub ramped_flags: Arc<[Option<Flag>]>,
    pub overrides: Arc<Overrides>,
}

pub type LiveSnapshot = ArcSwap<Snapshot>;

/// State kept across snapshots: connection pools, window stats, kill signals, flag counts.
#[derive(Default)]
pub struct Carried {
    pub upstreams: UpstreamCache,
    windows: HashMap<(Arc<str>, Arc<str>, Duration), Arc<WindowStats>>,
    runtime: HashMap<Arc<str>, Arc<RouteRuntime>>,
    /// Evaluation counts by flag key and variant name.
    flag_served: HashMap<(String, String), Arc<AtomicU64>>,
    /// What each route's shadow found, by route, candidate and noise instance: copying to
    /// another candidate, or learning from another instance, starts afresh.
    shadows: HashMap<ShadowKey, Arc<ShadowState>>,
}

impl Snapshot {
    pub fn build(
        config: Config,
        generation: Generation,
        carried: &mut Carried,
        overrides: Arc<Overrides>,
    ) -> Snapshot {
        let upstreams = carried.upstreams.build(&config.backends);
        let mut windows = HashMap::new();
        let mut runtimes = HashMap::new();
        let mut shadows = HashMap::new();
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                let name: Arc<str> = spec.name.as_str().into();
                let runtime = carried.runtime.get(&name).cloned().unwrap_or_default();
                runtimes.insert(name.clone(), runtime.clone());
                let window = spec
                    .guard
                    .as_ref()
                    .map_or(DEFAULT_STATS_WINDOW, |g| g.window);
                let targets = spec
                    .split
                    .iter()
                    .zip(shares_in_force(spec, &overrides))
                    .zip(upper_buckets(shares_in_force(spec, &overrides)))
                    .map(|((&(backend, configured), share), upper_bucket)| {
                        let backend = upstreams[backend].clone();
                        let key = (name.clone(), backend.name.clone(), window);
                        let stats = carried
                            .windows
                            .get(&key)
                            .cloned()
                            .unwrap_or_else(|| Arc::new(WindowStats::new(window)));
                        windows.insert(key, stats.clone());
                        LiveTarget {
                            telemetry: TargetTelemetry::new(&name, &backend.name),
                            backend,
                            configured,
                            share,
                            upper_bucket,
                            window: stats,
                        }
                    })
                    .collect();
                let shadow = spec.shadow.as_ref().map(|spec| {
                    let noise = spec.noise.map(|index| upstreams[index].name.clone());
                    let key = (name.clone(), upstreams[spec.to].name.clone(), noise);
                    let state = carried
                        .shadows
                        .get(&key)
                        .cloned()
                        .unwrap_or_else(|| Arc::new(ShadowState::new(&name)));
                    shadows.insert(key, state.clone());
                    Arc::new(LiveShadow::new(spec, &upstreams, state))
                });
                LiveRoute {
                    matcher: spec.matcher.clone(),
                    sticky: spec.sticky.clone(),
                    strip: strip_len(&spec.matcher, spec.strip_prefix),
                    fallback: spec.fallback,
                    guard: spec.guard.as_ref().map(Guard::from),
                    killed_in_config: spec.kill,
                    kill: kill_of(&spec.name, spec.kill, &overrides),
                    telemetry: RouteTelemetry::new(&name),
                    runtime,
                    targets,
                    shadow,
                    name,
                }
            })
            .collect();
        carried.windows = windows;
        carried.runtime = runtimes;
        carried.shadows = shadows;
        let flag_telemetry = flag_telemetry(&config, &mut carried.flag_served);
        Snapshot {
            generation,
            ramped_flags: ramped_flags(&config, &overrides),
            config: Arc::new(config),
            routes,
            flag_telemetry,
            overrides,
        }
    }

    /// What is live before the first load (generation 0): no routes, no flags. No listener
    /// is bound until the first load succeeds, so no request ever sees it.
    pub fn before_first_load() -> Snapshot {
        Snapshot {
            generation: 0,
            config: Arc::new(Config::empty()),
            routes: Arc::from([]),
            flag_telemetry: Arc::from([]),
            ramped_flags: Arc::from([]),
            overrides: Arc::default(),
        }
    }

    /// The same config with other runtime overrides: only the routes' kills and the shares
    /// their ramps give change.
    pub fn with_overrides(&self, overrides: Arc<Overrides>) -> Snapshot {
        let routes = self
            .config
            .routes
            .iter()
            .zip(self.routes.iter())
            .map(|(spec, route)| {
                let shares = shares_in_force(spec, &overrides);
                let targets = route
                    .targets
                    .iter()
                    .zip(upper_buckets(shares.iter().copied()))
                    .zip(&shares)
                    .map(|((target, upper_bucket), &share)| LiveTarget {
                        share,
                        upper_bucket,
                        ..target.clone()
                    })
                    .collect();
                LiveRoute {
                    kill: kill_of(&route.name, route.killed_in_config, &overrides),
                    targets,
                    ..route.clone()
                }
            })
            .collect();
        Snapshot {
            generation: self.generation,
            config: self.config.clone(),
            routes,
            flag_telemetry: self.flag_telemetry.clone(),
            ramped_flags: ramped_flags(&self.config, &overrides),
            overrides,
        }
    }

    /// Index into `routes` of the first route that matches `req`.
    pub fn find_route(&self, req: &RequestHead<'_>) -> Option<usize> {
        self.routes.iter().position(|r| r.matcher.matches(req))
    }

    pub fn route(&self, name: &str) -> Option<&LiveRoute> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// Flag `index` as it is served now: with its ramp's rollout when it has one in force.
    pub fn flag_in_force(&self, index: usize) -> &Flag {
        self.ramped_flags
            .get(index)
            .and_then(Option::as_ref)
            .unwrap_or(&self.config.flags[index].1)
    }

    /// Publishes the gauges that describe this snapshot.
    pub fn export_gauges(&self) {
        telemetry::config_generation(self.generation);
        for route in self.routes.iter() {
            for (target, share) in route.targets.iter().zip(route.effective_shares()) {
                telemetry::route_weight(&route.name, &target.backend.name, share);
            }
            telemetry::route_killed(&route.name, route.kill.is_some());
        }
        for spec in &self.config.routes {
            if let Some((_, progress)) = ramp_of(spec, &self.overrides) {
                telemetry::ramp_step_percent(&spec.name, progress.share_in_force(spec.split[1].1));
            }
        }
        for (key, flag) in &self.config.flags {
            if let Some((ramp, progress)) = flag_ramp_of(key, flag, &self.overrides) {
                telemetry::flag_ramp_step_percent(key, progress.share_in_force(ramp.configured));
            }
        }
    }
}

/// Each target's share in basis points, stable first: the YAML's split, or the share the
/// route's ramp gives `to` with stable taking the rest.
fn shares_in_force(spec: &RouteSpec, overrides: &Overrides) -> Vec<u32> {
    match ramp_of(spec, overrides) {
        // A ramped route splits between stable and `to` only (the validator sees to that).
        Some((_, progress)) => {
            let to = progress.share_in_force(spec.split[1].1);
            vec![BUCKETS - to, to]
        }
        None => spec.split.iter().map(|&(_, share)| share).collect(),
    }
}

/// Each flag with the rollout its ramp gives now, where a ramp is in force.
fn ramped_flags(config: &Config, overrides: &Overrides) -> Arc<[Option<Flag>]> {
    config
        .flags
        .iter()
        .map(|(key, flag)| {
            let (ramp, progress) = flag_ramp_of(key, flag, overrides)?;
            Some(Flag {
                rollout: Some(ramp.rollout(progress.share_in_force(ramp.configured))),
                ..flag.clone()
            })
        })
        .collect()
}

/// The kill in force for a route: the YAML's, else a runtime override's.
fn kill_of(route: &str, killed_in_config: bool, overrides: &Overrides) -> Option<Kill> {
    if killed_in_config {
        Some(Kill::in_config())
    } else {
        overrides.routes.get(route).cloned()
    }
}

fn flag_telemetry(
    config: &Config,
    carried: &mut HashMap<(String, String), Arc<AtomicU64>>,
) -> Arc<[FlagTelemetry]> {
    let mut kept = HashMap::new();
    let telemetry = config
        .flags
        .iter()
        .map(|(key, flag)| {
            let variants: Vec<&str> = flag.variants.iter().map(|v| v.name.as_str()).collect();
            let served = variants
                .iter()
                .map(|&variant| {
                    let id = (key.clone(), variant.to_owned());
                    let count = carried.remove(&id).unwrap_or_default();
                    kept.insert(id, count.clone());
                    count
                })
                .collect();
            FlagTelemetry::new(&key.as_str().into(), &variants, served)
        })
        .collect();
    *carried = kept;
    telemetry
}

/// Routes compiled from YAML, for unit tests of the route compiler and of its users.
#[cfg(test)]
pub fn compile_for_test(yaml: &str) -> Snapshot {
    let config = crate::config::compile_text(std::path::Path::new("/tmp/cutover-test.yaml"), yaml)
        .unwrap_or_else(|errors| panic!("invalid test config: {errors:?}"));
    Snapshot::build(
        config,
        1,
        &mut Carried::default(),
        Arc::new(Overrides::default()),
    )
}
