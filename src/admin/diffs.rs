//! The `/api/routes/{name}/diffs` document, what a route's shadow has found, and its summary
//! in `/api/status`. Shared by the admin API and `cutover diffs`, like [`super::status`].

use serde::{Deserialize, Serialize};

use crate::bucket::format_percent;
use crate::shadow::live::Sample;
use crate::shadow::{LiveShadow, ShadowResult};
use crate::snapshot::LiveRoute;

/// One route's shadow at a glance.
#[derive(Debug, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// The candidate.
    pub to: String,
    /// The second stable instance noise is learned from.
    pub noise: Option<String>,
    /// Of the requests stable serves with a listed method.
    pub percent: f64,
    pub methods: Vec<String>,
    pub counts: ShadowCounts,
    /// Percent of compared copies (match + mismatch) that matched; none before the first.
    pub match_percent: Option<f64>,
    pub in_flight: usize,
    pub max_inflight: usize,
    /// Where the kept mismatches are.
    pub diffs: String,
}

/// Copies by result since this route started copying to this candidate.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShadowCounts {
    #[serde(rename = "match")]
    pub matched: u64,
    pub mismatch: u64,
    pub error: u64,
    pub timeout: u64,
    pub dropped: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Diffs {
    pub route: String,
    #[serde(flatten)]
    pub shadow: ShadowSummary,
    /// JSON pointers on which two stable answers were seen to differ, ignored from then on.
    pub learned_noise: Vec<String>,
    /// The last mismatches, newest first.
    pub samples: Vec<Sample>,
}

impl ShadowSummary {
    pub fn of(route: &LiveRoute, shadow: &LiveShadow) -> ShadowSummary {
        let [matched, mismatch, error, timeout, dropped] = shadow.state.counts();
        debug_assert_eq!(ShadowResult::ALL[0], ShadowResult::Match);
        let compared = matched + mismatch;
        ShadowSummary {
            to: shadow.candidate.name.to_string(),
            noise: shadow.noise.as_ref().map(|n| n.name.to_string()),
            percent: f64::from(shadow.share) / 100.0,
            methods: shadow.methods().iter().map(ToString::to_string).collect(),
            counts: ShadowCounts {
                matched,
                mismatch,
                error,
                timeout,
                dropped,
            },
            match_percent: (compared > 0)
                .then(|| (matched as f64 * 10_000.0 / compared as f64).round() / 100.0),
            in_flight: shadow.state.inflight(),
            max_inflight: shadow.max_inflight,
            diffs: format!(
                "/api/routes/{}/diffs",
                percent_encoding::utf8_percent_encode(
                    &route.name,
                    percent_encoding::NON_ALPHANUMERIC
                )
            ),
        }
    }

    /// `match 97.5% of 120 compared · mismatch 3 · error 0 · timeout 0 · dropped 0`
    pub fn describe_counts(&self) -> String {
        let c = &self.counts;
        let rate = match self.match_percent {
            Some(rate) => format!("match {rate}% of {} compared", c.matched + c.mismatch),
            None => "nothing compared yet".to_owned(),
        };
        format!(
            "{rate} · mismatch {} · error {} · timeout {} · dropped {}",
            c.mismatch, c.error, c.timeout, c.dropped
        )
    }
}

impl Diffs {
    /// `None` when the route does not shadow.
    pub fn of(route: &LiveRoute) -> Option<Diffs> {
        let shadow = route.shadow.as_ref()?;
        Some(Diffs {
            route: route.name.to_string(),
            shadow: ShadowSummary::of(route, shadow),
            learned_noise: match shadow.noise {
                Some(_) => shadow
                    .state
                    .learned()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                None => Vec::new(),
            },
            // A lowered `samples` shows at once, not at the next mismatch.
            samples: shadow
                .state
                .samples()
                .into_iter()
                .take(shadow.samples)
                .collect(),
        })
    }

    /// What `cutover diffs ROUTE` prints.
    pub fn render(&self) -> String {
        let s = &self.shadow;
        let mut out = format!(
            "route {}: {}% of {} requests stable serves copied to {}",
            self.route,
            format_percent((s.percent * 100.0).round() as u32),
            s.methods.join("/"),
            s.to
        );
        if let Some(noise) = &s.noise {
            out.push_str(&format!(", noise learned from {noise}"));
        }
        out.push_str(&format!(
            "\n  {}\n  in flight {} of {}\n",
            s.describe_counts(),
            s.in_flight,
            s.max_inflight
        ));
        if !self.learned_noise.is_empty() {
            out.push_str(&format!(
                "  ignored as noise: {}\n",
                self.learned_noise.join(", ")
            ));
        }
        if self.samples.is_empty() {
            out.push_str("no mismatches kept\n");
            return out;
        }
        out.push_str(&format!(
            "\nlast {} mismatches, newest first:\n",
            self.samples.len()
        ));
        for sample in &self.samples {
            out.push_str(&format!(
                "{} {} {}  request {}  status {} (stable) vs {} ({})\n",
                sample.time,
                sample.method,
                sample.path,
                sample.request_id.as_deref().unwrap_or("-"),
                sample.primary_status,
                sample.candidate_status,
                s.to
            ));
            for difference in &sample.differences {
                out.push_str(&format!(
                    "    {}\n      stable:    {}\n      {:<10} {}\n",
                    difference.pointer,
                    difference.primary.as_deref().unwrap_or("(absent)"),
                    format!("{}:", s.to),
                    difference.candidate.as_deref().unwrap_or("(absent)"),
                ));
            }
            let more = sample.differences_total - sample.differences.len();
            if more > 0 {
                out.push_str(&format!("    … and {more} more\n"));
            }
        }
        out
    }
}
