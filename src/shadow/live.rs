//! A route's shadow as the request path sees it ([`LiveShadow`], rebuilt with every snapshot)
//! and what it has found so far ([`ShadowState`], kept across reloads for as long as the route
//! copies to the same candidate): copies in flight, counts by result, learned noise and the
//! last mismatches.
//!
//! Deciding to copy costs the request path a bucket comparison and, for a copy, two atomic
//! operations. A copy past `max_inflight` is counted `dropped` before any work is done for it;
//! after a copy could not connect, the candidate is taken as down for [`DOWN_FOR`], and the
//! copies in that time are counted `error` without being sent, so a candidate that is down
//! costs no connection attempt per request.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::Method;
use metrics::{counter, Counter, SharedString};
use serde::{Deserialize, Serialize};

use super::compare::{Difference, Noise, PointerPattern};
use super::verdict::Settings;
use crate::bucket::BUCKETS;
use crate::config::ShadowSpec;
use crate::proxy::upstream::Upstream;
use crate::telemetry::SHADOW_REQUESTS_TOTAL;

/// How long a candidate that refused a connection is left alone.
pub const DOWN_FOR: Duration = Duration::from_secs(1);

/// How a copy ended; the `result` label of `cutover_shadow_requests_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShadowResult {
    Match = 0,
    Mismatch = 1,
    /// The candidate could not be reached or gave no valid answer.
    Error = 2,
    /// The candidate's answer was not complete within `timeout`.
    Timeout = 3,
    /// Not compared: past `max_inflight`, a request body past `max_body` or not whole within
    /// `timeout`, or no complete answer from stable within `timeout`.
    Dropped = 4,
}

impl ShadowResult {
    pub const ALL: [ShadowResult; 5] = [
        ShadowResult::Match,
        ShadowResult::Mismatch,
        ShadowResult::Error,
        ShadowResult::Timeout,
        ShadowResult::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowResult::Match => "match",
            ShadowResult::Mismatch => "mismatch",
            ShadowResult::Error => "error",
            ShadowResult::Timeout => "timeout",
            ShadowResult::Dropped => "dropped",
        }
    }
}

/// One kept mismatch, as the diffs API shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// RFC 3339, UTC.
    pub time: String,
    pub method: String,
    /// Without the query string, which may carry personal data or secrets.
    pub path: String,
    pub request_id: Option<String>,
    pub primary_status: u16,
    pub candidate_status: u16,
    /// Every difference found, of which the first few are in `differences`.
    pub differences_total: usize,
    pub differences: Vec<Difference>,
}

/// What one route's shadow has found; shared by the snapshots that copy to the same candidate.
pub struct ShadowState {
    inflight: AtomicUsize,
    counts: [AtomicU64; 5],
    counters: [Counter; 5],
    /// Milliseconds after `epoch` until which the candidate is taken as down.
    down_until: AtomicU64,
    epoch: Instant,
    noise: Mutex<Noise>,
    /// Newest first.
    samples: Mutex<VecDeque<Sample>>,
}

impl ShadowState {
    pub fn new(route: &Arc<str>) -> ShadowState {
        ShadowState {
            inflight: AtomicUsize::new(0),
            counts: Default::default(),
            counters: ShadowResult::ALL.map(|result| {
                counter!(
                    SHADOW_REQUESTS_TOTAL,
                    "route" => SharedString::from(route.clone()),
                    "result" => SharedString::const_str(result.as_str())
                )
            }),
            down_until: AtomicU64::new(0),
            epoch: Instant::now(),
            noise: Mutex::default(),
            samples: Mutex::default(),
        }
    }

    pub fn record(&self, result: ShadowResult) {
        self.counts[result as usize].fetch_add(1, Ordering::Relaxed);
        self.counters[result as usize].increment(1);
    }

    /// Counts by result, in [`ShadowResult::ALL`] order.
    pub fn counts(&self) -> [u64; 5] {
        ShadowResult::ALL.map(|result| self.counts[result as usize].load(Ordering::Relaxed))
    }

    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Keeps `sample` as the newest of at most `keep`.
    pub fn keep_sample(&self, sample: Sample, keep: usize) {
        let mut samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.push_front(sample);
        samples.truncate(keep);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(PoisonError::into_inner);
        samples.iter().cloned().collect()
    }

    /// The places learned as noise so far.
    pub fn learned(&self) -> Vec<PointerPattern> {
        let noise = self.noise.lock().unwrap_or_else(PoisonError::into_inner);
        noise.learned().to_vec()
    }

    /// Adds `places` (found outside the lock) to the noise and returns all it holds.
    pub fn learn(&self, places: Vec<PointerPattern>) -> Vec<PointerPattern> {
        let mut noise = self.noise.lock().unwrap_or_else(PoisonError::into_inner);
        noise.add(places);
        noise.learned().to_vec()
    }

    fn millis(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// A copy could not connect: the next ones in [`DOWN_FOR`] are not sent.
    pub fn candidate_down(&self) {
        let until = self.millis(Instant::now() + DOWN_FOR);
        self.down_until.fetch_max(until, Ordering::Relaxed);
    }

    fn is_down(&self, now: Instant) -> bool {
        self.millis(now) < self.down_until.load(Ordering::Relaxed)
    }
}

/// A route's `shadow:` compiled for the request path.
pub struct LiveShadow {
    pub candidate: Arc<Upstream>,
    /// A second stable instance whose answers teach the noise.
    pub noise: Option<Arc<Upstream>>,
    /// Configured share of eligible requests (those stable serves, with a listed method), in
    /// basis points.
    pub share: u32,
    methods: Vec<Method>,
    pub max_body: usize,
    pub timeout: Duration,
    pub max_inflight: usize,
    pub compare: Settings,
    pub samples: usize,
    pub state: Arc<ShadowState>,
}

impl LiveShadow {
    pub fn new(
        spec: &ShadowSpec,
        upstreams: &[Arc<Upstream>],
        state: Arc<ShadowState>,
    ) -> LiveShadow {
        LiveShadow {
            candidate: upstreams[spec.to].clone(),
            noise: spec.noise.map(|index| upstreams[index].clone()),
            share: spec.share,
            methods: spec.methods.clone(),
            max_body: spec.max_body,
            timeout: spec.timeout,
            max_inflight: spec.max_inflight,
            compare: spec.compare.clone(),
            samples: spec.samples,
            state,
        }
    }

    pub fn methods(&self) -> &[Method] {
        &self.methods
    }

    /// Whether a request stable serves, in `bucket`, is one to copy: stable owns the buckets
    /// below `stable_upper`, and the lowest `share` of those are copied. With a sticky key the
    /// bucket is the user's, so the same users are copied every time.
    #[inline]
    pub fn wants(&self, bucket: u16, stable_upper: u16, method: &Method) -> bool {
        u32::from(bucket) * BUCKETS < self.share * u32::from(stable_upper)
            && self.methods.contains(method)
    }

    /// A place for one more copy, or `None` (counted) when the request body is known to be
    /// over `max_body`, the candidate is down or `max_inflight` copies are in flight.
    #[inline]
    pub fn admit(self: &Arc<Self>, now: Instant, body_fits: bool) -> Option<Slot> {
        let state = &self.state;
        if !body_fits {
            state.record(ShadowResult::Dropped);
            return None;
        }
        if state.is_down(now) {
            state.record(ShadowResult::Error);
            return None;
        }
        if state.inflight.fetch_add(1, Ordering::AcqRel) >= self.max_inflight {
            state.inflight.fetch_sub(1, Ordering::AcqRel);
            state.record(ShadowResult::Dropped);
            return None;
        }
        Some(Slot {
            shadow: self.clone(),
        })
    }
}

/// One copy's place among `max_inflight`, given back when the copy is done.
pub struct Slot {
    shadow: Arc<LiveShadow>,
}

impl Slot {
    pub fn shadow(&self) -> &LiveShadow {
        &self.shadow
    }

    /// The shadow, for work that must own it (a comparison on the blocking pool).
    pub fn shared(&self) -> Arc<LiveShadow> {
        self.shadow.clone()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shadow.state.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}
