//! One compiled route: everything the request path needs to match a request, pick a backend,
//! forward it and record the outcome, in one value. `targets[0]` is the stable backend; a
//! per-route feature is one more field here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::bucket::BUCKETS;
use crate::control::guard::Guard;
use crate::control::overrides::Kill;
use crate::control::window::WindowStats;
use crate::proxy::routing::{self, Matcher, PathMatch, RequestHead, StickySource};
use crate::proxy::upstream::Upstream;
use crate::shadow::LiveShadow;
use crate::telemetry::{RouteTelemetry, TargetTelemetry};

/// Per-route state that outlives snapshots (kept by route name across reloads).
pub struct RouteRuntime {
    /// Bumped on every kill; long-lived streams to non-stable backends watch it.
    pub kill_signal: watch::Sender<u64>,
    /// Set by the request path the moment the guard trips, so the very next request goes to
    /// stable while the control plane publishes the kill; cleared by a resume. Also keeps a
    /// trip from being sent twice.
    tripped: AtomicBool,
}

impl RouteRuntime {
    /// Marks a guard trip; true for the first caller only.
    pub fn trip(&self) -> bool {
        !self.tripped.swap(true, Ordering::AcqRel)
    }

    /// A resume called the trip off (or applying it failed).
    pub fn clear_trip(&self) {
        self.tripped.store(false, Ordering::Release);
    }

    pub fn is_tripped(&self) -> bool {
        self.tripped.load(Ordering::Acquire)
    }
}

impl Default for RouteRuntime {
    fn default() -> Self {
        RouteRuntime {
            kill_signal: watch::Sender::new(0),
            tripped: AtomicBool::new(false),
        }
    }
}

#[derive(Clone)]
pub struct LiveRoute {
    pub name: Arc<str>,
    pub matcher: Matcher,
    pub sticky: Option<StickySource>,
    /// Bytes of the path the route's prefix covers, removed before forwarding (`strip_prefix`).
    pub strip: usize,
    /// Replay idempotent requests on stable when a non-stable backend cannot be reached.
    pub fallback: bool,
    pub guard: Option<Guard>,
    /// Whether the YAML itself says `kill: true` (a runtime resume cannot undo that).
    pub killed_in_config: bool,
    /// The kill in force, from the YAML or a runtime override.
    pub kill: Option<Kill>,
    pub telemetry: RouteTelemetry,
    pub runtime: Arc<RouteRuntime>,
    /// Stable first, then the others in file order; this order lays out the bucket ranges.
    pub targets: Box<[LiveTarget]>,
    /// Copies of requests stable serves, to a candidate.
    pub shadow: Option<Arc<LiveShadow>>,
}

/// One backend of one route.
#[derive(Clone)]
pub struct LiveTarget {
    pub backend: Arc<Upstream>,
    /// The YAML's share, in basis points.
    pub configured: u32,
    /// The share in force, in basis points: the YAML's, or what the route's ramp gives.
    pub share: u32,
    /// This target owns buckets from the previous target's `upper_bucket` up to this one.
    pub upper_bucket: u16,
    pub telemetry: TargetTelemetry,
    pub window: Arc<WindowStats>,
}

impl LiveRoute {
    pub fn stable(&self) -> &LiveTarget {
        &self.targets[0]
    }

    /// Killed in the snapshot, or tripped by its guard a moment ago.
    pub fn is_killed(&self) -> bool {
        self.kill.is_some() || self.runtime.is_tripped()
    }

    /// Index into `targets` of the backend that serves this request: by the sticky key's
    /// bucket, a random bucket without one, and stable when the route is killed.
    pub fn pick(&self, req: &RequestHead<'_>) -> usize {
        self.bucket(req)
            .map_or(0, |bucket| self.target_for_bucket(bucket))
    }

    /// The request's bucket, or `None` when the route is killed: then nothing is picked by
    /// bucket, every request goes to stable and none is copied.
    #[inline]
    pub fn bucket(&self, req: &RequestHead<'_>) -> Option<u16> {
        if self.is_killed() {
            return None;
        }
        Some(routing::request_bucket(
            &self.name,
            self.sticky.as_ref(),
            req,
        ))
    }

    pub fn target_for_bucket(&self, bucket: u16) -> usize {
        self.targets
            .iter()
            .position(|t| bucket < t.upper_bucket)
            .unwrap_or(0)
    }

    /// What each target gets now, in basis points: its share, or all-or-nothing when killed.
    pub fn effective_shares(&self) -> impl Iterator<Item = u32> + '_ {
        let killed = self.kill.is_some();
        self.targets
            .iter()
            .enumerate()
            .map(move |(i, t)| match (killed, i) {
                (false, _) => t.share,
                (true, 0) => BUCKETS,
                (true, _) => 0,
            })
    }
}

/// Bytes of the path removed before forwarding: the matched prefix, when `strip_prefix` is set.
pub(super) fn strip_len(matcher: &Matcher, strip_prefix: bool) -> usize {
    match (&matcher.path, strip_prefix) {
        (Some(PathMatch::Prefix(prefix)), true) if prefix != "/" => prefix.len(),
        _ => 0,
    }
}

/// Exclusive upper bucket of each share, in order.
pub(super) fn upper_buckets(shares: impl IntoIterator<Item = u32>) -> impl Iterator<Item = u16> {
    let mut upper = 0u32;
    shares.into_iter().map(move |share| {
        upper = (upper + share).min(BUCKETS);
        upper as u16
    })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use http::{HeaderMap, HeaderValue, Method};
    use proptest::prelude::*;

    use crate::bucket::format_percent;
    use crate::control::overrides::{Kill, KillSource, Overrides};
    use crate::snapshot::{compile_for_test, Snapshot};

    use super::*;

    const BACKENDS: &str = "backends:\n  legacy: { url: \"http://127.0.0.1:9\" }\n  v2: { url: \"http://127.0.0.1:10/base\" }\n";

    /// One sticky route, `v2` getting `share` basis points.
    fn two_way(share: u32) -> Snapshot {
        compile_for_test(&format!(
            "{BACKENDS}routes:\n  - name: payments\n    match: {{ path_prefix: /api/payments }}\n    split: {{ legacy: {}, v2: {} }}\n    sticky: {{ header: x-user-id }}\n",
            format_percent(BUCKETS - share),
            format_percent(share)
        ))
    }

    fn backend_for(route: &LiveRoute, user: &str) -> Arc<str> {
        let mut headers = HeaderMap::new();
        headers.insert("x-user-id", HeaderValue::from_str(user).unwrap());
        let head = RequestHead {
            method: &Method::GET,
            path: "/api/payments",
            query: None,
            host: Some("shop.example.com"),
            headers: &headers,
            client_ip: IpAddr::from([127, 0, 0, 1]),
        };
        route.targets[route.pick(&head)].backend.name.clone()
    }

    #[test]
    fn compiles_stable_first_with_its_bucket_range() {
        let snapshot = compile_for_test(&format!(
            "{BACKENDS}routes:\n  - name: payments\n    match: {{ path_prefix: /api/payments }}\n    strip_prefix: true\n    split: {{ v2: 10, legacy: 90 }}\n    stable: legacy\n    guard: {{ max_error_rate: 5, min_requests: 50, window: 30s }}\n"
        ));
        let route = &snapshot.routes[0];
        let names: Vec<&str> = route.targets.iter().map(|t| &*t.backend.name).collect();
        assert_eq!(names, ["legacy", "v2"]);
        assert_eq!(route.stable().share, 9_000);
        let uppers: Vec<u16> = route.targets.iter().map(|t| t.upper_bucket).collect();
        assert_eq!(uppers, [9_000, 10_000]);
        assert_eq!(
            (
                route.target_for_bucket(8_999),
                route.target_for_bucket(9_000)
            ),
            (0, 1)
        );
        assert_eq!(route.strip, "/api/payments".len());
        assert_eq!(route.guard.as_ref().map(|g| g.min_requests), Some(50));
        assert!(route.kill.is_none() && !route.killed_in_config);
    }

    #[test]
    fn kill_sends_everything_to_stable() {
        let snapshot = two_way(BUCKETS);
        assert_eq!(&*backend_for(&snapshot.routes[0], "anyone"), "v2");
        let mut overrides = Overrides::default();
        overrides
            .routes
            .insert("payments".into(), Kill::now(KillSource::Api, "test"));
        let killed = snapshot.with_overrides(Arc::new(overrides));
        assert_eq!(&*backend_for(&killed.routes[0], "anyone"), "legacy");
        let shares: Vec<u32> = killed.routes[0].effective_shares().collect();
        assert_eq!(shares, [BUCKETS, 0]);
        // The snapshot the kill was derived from is untouched.
        assert_eq!(&*backend_for(&snapshot.routes[0], "anyone"), "v2");
    }

    #[test]
    fn a_guard_trip_holds_from_the_next_request_until_handled() {
        let snapshot = two_way(BUCKETS);
        let route = &snapshot.routes[0];
        assert!(route.runtime.trip(), "the first trip is reported");
        assert!(!route.runtime.trip(), "a second trip is not reported again");
        assert_eq!(&*backend_for(route, "anyone"), "legacy");
        route.runtime.clear_trip();
        assert_eq!(&*backend_for(route, "anyone"), "v2");
    }

    #[test]
    fn a_kill_in_the_yaml_is_marked_as_such() {
        let snapshot = compile_for_test(&format!(
            "{BACKENDS}routes:\n  - name: all\n    match: {{ path_prefix: / }}\n    split: {{ legacy: 50, v2: 50 }}\n    kill: true\n"
        ));
        let route = &snapshot.routes[0];
        assert!(route.killed_in_config && route.kill.is_some());
        assert_eq!(route.strip, 0);
    }

    proptest! {
        /// Raising the new backend's share never moves a user back to stable.
        #[test]
        fn ramp_is_monotonic(users in prop::collection::vec("[a-z0-9]{1,16}", 1..50),
                             a in 0u32..=BUCKETS, b in 0u32..=BUCKETS) {
            let (low, high) = (a.min(b), a.max(b));
            let (before, after) = (two_way(low), two_way(high));
            for user in &users {
                if &*backend_for(&before.routes[0], user) == "v2" {
                    prop_assert_eq!(&*backend_for(&after.routes[0], user), "v2");
                }
            }
        }

        #[test]
        fn same_key_same_backend(user in "[a-zA-Z0-9-]{1,32}", share in 0u32..=BUCKETS) {
            let snapshot = two_way(share);
            prop_assert_eq!(
                backend_for(&snapshot.routes[0], &user),
                backend_for(&snapshot.routes[0], &user)
            );
        }
    }
}
