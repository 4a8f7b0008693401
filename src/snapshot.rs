//! The live configuration: one immutable [`Snapshot`] behind one `ArcSwap`.
//!
//! A reload builds a complete snapshot off the request path and stores it with a single
//! swap; a request loads it once and uses that one view from start to end. Nothing here
//! takes a lock on the request path.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::forward::{Upstream, UpstreamCache};
use crate::routing::{Route, RouteTable};
use crate::telemetry::{self, TargetTelemetry};

/// Monotonic number of a successfully loaded config.
pub type Generation = u64;

pub struct Snapshot {
    pub generation: Generation,
    pub config: Arc<Config>,
    pub routes: RouteTable,
    /// Indexed like `config.backends`.
    pub upstreams: Vec<Arc<Upstream>>,
    /// Counter handles per route, per target (indexed like `routes.routes[i].targets`).
    pub telemetry: Vec<Vec<TargetTelemetry>>,
}

pub type LiveSnapshot = ArcSwap<Snapshot>;

impl Snapshot {
    pub fn build(
        config: Config,
        generation: Generation,
        upstreams: &mut UpstreamCache,
    ) -> Snapshot {
        let upstreams = upstreams.build(&config.backends);
        let mut telemetry = Vec::with_capacity(config.routes.len());
        let routes = config
            .routes
            .iter()
            .map(|spec| {
                let targets = Route::targets_from_split(&spec.split);
                telemetry.push(
                    spec.split
                        .iter()
                        .map(|&(backend, _)| {
                            TargetTelemetry::new(&spec.name, &config.backends[backend].name)
                        })
                        .collect(),
                );
                Route {
                    name: spec.name.as_str().into(),
                    matcher: spec.matcher.clone(),
                    targets,
                    sticky: spec.sticky.clone(),
                    strip_prefix: spec.strip_prefix,
                    kill: spec.kill,
                }
            })
            .collect();
        Snapshot {
            generation,
            config: Arc::new(config),
            routes: RouteTable { routes },
            upstreams,
            telemetry,
        }
    }

    /// Publishes the gauges that describe this snapshot.
    pub fn export_gauges(&self) {
        telemetry::config_generation(self.generation);
        for spec in &self.config.routes {
            for &(backend, share) in &spec.split {
                let effective = match (spec.kill, backend == spec.stable) {
                    (false, _) => share,
                    (true, true) => crate::routing::BUCKETS,
                    (true, false) => 0,
                };
                telemetry::route_weight(&spec.name, &self.config.backends[backend].name, effective);
            }
            telemetry::route_killed(&spec.name, spec.kill);
        }
    }
}
