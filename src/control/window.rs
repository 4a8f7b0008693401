//! Live request statistics per route and backend over a sliding window: request count, error
//! count and a latency histogram, in time slots of atomics. Recording is a few relaxed atomic
//! adds and never locks; reading sums the slots still inside the window.
//!
//! A slot is reused when time wraps around to it; the first writer of the new period resets
//! it. A request recorded concurrently with that reset may be lost: the numbers are exact up
//! to that rare race, which is acceptable for rates and a rollback threshold.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Slots per window (plus the one being filled). Windows up to 60 s get one-second slots.
const SLOTS: u64 = 60;
/// Latency buckets: upper bounds 0.5 ms × √2^i, so the last finite one is about 16 s.
const LATENCY_BUCKETS: usize = 32;

fn process_start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

struct Slot {
    /// Period number this slot holds, plus one (0: never used).
    period: AtomicU64,
    requests: AtomicU64,
    errors: AtomicU64,
    latency: [AtomicU32; LATENCY_BUCKETS],
}

impl Slot {
    fn new() -> Slot {
        Slot {
            period: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }
}

pub struct WindowStats {
    created: Instant,
    window: Duration,
    slot_ms: u64,
    slots: Box<[Slot]>,
}

/// A summary of the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowTotals {
    pub requests: u64,
    pub errors: u64,
    /// Seconds the totals cover (less than the window right after start).
    pub seconds: f64,
    pub p50: Option<Duration>,
    pub p99: Option<Duration>,
}

impl WindowTotals {
    pub fn error_percent(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 * 100.0 / self.requests as f64
        }
    }

    pub fn rate(&self) -> f64 {
        if self.seconds > 0.0 {
            self.requests as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Requests, errors and latencies summed over some settled periods (see
/// [`WindowStats::settled_since`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settled {
    pub requests: u64,
    pub errors: u64,
    latency: [u64; LATENCY_BUCKETS],
}

impl Settled {
    pub fn add(&mut self, other: &Settled) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (sum, count) in self.latency.iter_mut().zip(&other.latency) {
            *sum += count;
        }
    }

    pub fn p99(&self) -> Option<Duration> {
        percentile(&self.latency, 0.99)
    }
}

/// The latency under which a fraction `p` of the samples fall, interpolated linearly within
/// its bucket as Prometheus' `histogram_quantile` does (bucket bounds alone are √2 apart, too
/// coarse for a ratio of two of them); `None` without samples.
fn percentile(histogram: &[u64; LATENCY_BUCKETS], p: f64) -> Option<Duration> {
    let samples: u64 = histogram.iter().sum();
    if samples == 0 {
        return None;
    }
    let rank = (samples as f64 * p).max(f64::MIN_POSITIVE);
    let mut seen = 0u64;
    histogram.iter().enumerate().find_map(|(i, &count)| {
        let before = seen;
        seen += count;
        if count == 0 || (seen as f64) < rank {
            return None;
        }
        let lower = if i == 0 {
            0.0
        } else {
            bucket_upper(i - 1).as_secs_f64()
        };
        let upper = bucket_upper(i).as_secs_f64();
        let within = (rank - before as f64) / count as f64;
        Some(Duration::from_secs_f64(lower + (upper - lower) * within))
    })
}

fn bucket_upper(index: usize) -> Duration {
    Duration::from_secs_f64(0.0005 * 2f64.powf(index as f64 / 2.0))
}

fn latency_bucket(latency: Duration) -> usize {
    let ratio = latency.as_secs_f64() / 0.0005;
    if ratio <= 1.0 {
        return 0;
    }
    ((ratio.log2() * 2.0).ceil() as usize).min(LATENCY_BUCKETS - 1)
}

impl WindowStats {
    pub fn new(window: Duration) -> WindowStats {
        let slot_ms = (window.as_millis() as u64).div_ceil(SLOTS).max(1000);
        WindowStats {
            created: Instant::now(),
            window,
            slot_ms,
            slots: (0..=SLOTS).map(|_| Slot::new()).collect(),
        }
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    fn period(&self, at: Instant) -> u64 {
        at.duration_since(process_start()).as_millis() as u64 / self.slot_ms
    }

    pub fn record_at(&self, at: Instant, latency: Duration, error: bool) {
        let period = self.period(at);
        let slot = &self.slots[(period % self.slots.len() as u64) as usize];
        let seen = slot.period.load(Ordering::Acquire);
        if seen != period + 1
            && slot
                .period
                .compare_exchange(seen, period + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.errors.store(0, Ordering::Relaxed);
            for bucket in &slot.latency {
                bucket.store(0, Ordering::Relaxed);
            }
        }
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
        slot.latency[latency_bucket(latency)].fetch_add(1, Ordering::Relaxed);
    }

    /// The period `at` falls in; a reader of [`WindowStats::settled_since`] starts from it.
    pub fn period_at(&self, at: Instant) -> u64 {
        self.period(at)
    }

    /// What was recorded in the periods after `after` that have ended by `at`, and the last of
    /// those periods: passed back as `after`, each period is counted once. Periods older than
    /// the window are gone, so a reader must come back within it.
    pub fn settled_since(&self, after: u64, at: Instant) -> (Settled, u64) {
        let now = self.period(at);
        let mut settled = Settled::default();
        for slot in self.slots.iter() {
            let period = slot.period.load(Ordering::Acquire);
            // Stored as period + 1; 0 is a slot never used.
            if period > after + 1 && period < now + 1 {
                settled.requests += slot.requests.load(Ordering::Relaxed);
                settled.errors += slot.errors.load(Ordering::Relaxed);
                for (sum, bucket) in settled.latency.iter_mut().zip(&slot.latency) {
                    *sum += u64::from(bucket.load(Ordering::Relaxed));
                }
            }
        }
        (settled, now.saturating_sub(1).max(after))
    }

    /// Requests and errors in the window, without percentiles: what the guard needs.
    pub fn counts(&self) -> (u64, u64) {
        self.counts_at(Instant::now())
    }

    pub fn counts_at(&self, at: Instant) -> (u64, u64) {
        let mut totals = (0, 0);
        self.for_each_live_slot(at, |slot| {
            totals.0 += slot.requests.load(Ordering::Relaxed);
            totals.1 += slot.errors.load(Ordering::Relaxed);
        });
        totals
    }

    pub fn totals(&self) -> WindowTotals {
        self.totals_at(Instant::now())
    }

    pub fn totals_at(&self, at: Instant) -> WindowTotals {
        let mut histogram = [0u64; LATENCY_BUCKETS];
        let (requests, errors) = self.counts_at(at);
        self.for_each_live_slot(at, |slot| {
            for (sum, bucket) in histogram.iter_mut().zip(&slot.latency) {
                *sum += u64::from(bucket.load(Ordering::Relaxed));
            }
        });
        // A window younger than its length covers only the time it has existed.
        let existed = at.saturating_duration_since(self.created).as_secs_f64();
        WindowTotals {
            requests,
            errors,
            seconds: self.window.as_secs_f64().min(existed.max(1.0)),
            p50: percentile(&histogram, 0.50),
            p99: percentile(&histogram, 0.99),
        }
    }

    /// Visits the slots whose period lies within the window ending at `at`.
    fn for_each_live_slot(&self, at: Instant, mut visit: impl FnMut(&Slot)) {
        let now = self.period(at);
        let periods = (self.window.as_millis() as u64)
            .div_ceil(self.slot_ms)
            .max(1);
        let oldest = now.saturating_sub(periods - 1);
        for slot in self.slots.iter() {
            let period = slot.period.load(Ordering::Acquire);
            if period > oldest && period <= now + 1 {
                visit(slot);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_inside_the_window_only() {
        let stats = WindowStats::new(Duration::from_secs(10));
        let t0 = process_start() + Duration::from_secs(100);
        for i in 0..10 {
            stats.record_at(
                t0 + Duration::from_secs(i),
                Duration::from_millis(5),
                i % 2 == 0,
            );
        }
        assert_eq!(stats.counts_at(t0 + Duration::from_secs(9)), (10, 5));
        // Five seconds later the first five have left the window.
        assert_eq!(stats.counts_at(t0 + Duration::from_secs(14)), (5, 2));
        assert_eq!(stats.counts_at(t0 + Duration::from_secs(60)), (0, 0));
    }

    #[test]
    fn reused_slots_start_from_zero() {
        let stats = WindowStats::new(Duration::from_secs(5));
        let t0 = process_start() + Duration::from_secs(1000);
        stats.record_at(t0, Duration::from_millis(1), true);
        // The same slot, 61 periods later.
        let later = t0 + Duration::from_secs(61);
        stats.record_at(later, Duration::from_millis(1), false);
        assert_eq!(stats.counts_at(later), (1, 0));
    }

    #[test]
    fn percentiles_come_from_the_latency_histogram() {
        let stats = WindowStats::new(Duration::from_secs(30));
        let t0 = process_start() + Duration::from_secs(50);
        for _ in 0..98 {
            stats.record_at(t0, Duration::from_millis(2), false);
        }
        for _ in 0..2 {
            stats.record_at(t0, Duration::from_millis(900), false);
        }
        let totals = stats.totals_at(t0);
        let p50 = totals.p50.unwrap();
        let p99 = totals.p99.unwrap();
        // 2 ms falls in the bucket (1.41 ms, 2 ms], 900 ms in (724 ms, 1024 ms].
        assert!(
            p50 > Duration::from_micros(1_414) && p50 <= Duration::from_millis(2),
            "{p50:?}"
        );
        assert!(
            p99 > Duration::from_millis(724) && p99 <= Duration::from_millis(1_024),
            "{p99:?}"
        );
    }

    #[test]
    fn settled_periods_are_counted_once_and_the_current_one_later() {
        let stats = WindowStats::new(Duration::from_secs(30));
        let t0 = process_start() + Duration::from_secs(200);
        let start = stats.period_at(t0);
        stats.record_at(t0, Duration::from_millis(1), false);
        stats.record_at(t0 + Duration::from_secs(1), Duration::from_millis(1), true);
        stats.record_at(t0 + Duration::from_secs(2), Duration::from_millis(1), false);
        // At t0 + 2s the period of t0 + 1s has ended, the one of t0 + 2s has not.
        let (settled, last) = stats.settled_since(start, t0 + Duration::from_secs(2));
        assert_eq!((settled.requests, settled.errors), (1, 1));
        assert!(settled
            .p99()
            .is_some_and(|p| p > Duration::from_micros(707)));
        let (settled, _) = stats.settled_since(last, t0 + Duration::from_secs(3));
        assert_eq!((settled.requests, settled.errors), (1, 0));
    }

    #[test]
    fn long_windows_use_wider_slots() {
        let stats = WindowStats::new(Duration::from_secs(600));
        let t0 = process_start() + Duration::from_secs(5000);
        for i in 0..600 {
            stats.record_at(t0 + Duration::from_secs(i), Duration::from_millis(1), false);
        }
        let (requests, _) = stats.counts_at(t0 + Duration::from_secs(599));
        assert!((590..=600).contains(&requests), "{requests}");
    }
}
