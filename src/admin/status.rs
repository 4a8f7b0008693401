//! The `/api/status` document: what is configured, what is in effect, and how each backend is
//! doing over its route's window. Shared by the admin API (which writes it) and `cutover
//! status` (which reads it), so the two can never disagree on a field.

use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use std::collections::HashMap;

use crate::admin::diffs::ShadowSummary;
use crate::admin::ramp::RampStatus;
use crate::bucket::format_percent;
use crate::control::overrides::Kill;
use crate::control::persist::PersistFailure;
use crate::control::{flag_ramp_of, ramp_of, LastReload, RampLive, Switch};
use crate::snapshot::Snapshot;

#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub generation: u64,
    pub config_file: String,
    pub last_reload: ReloadStatus,
    #[serde(default)]
    pub state_file: StateFileStatus,
    pub routes: Vec<RouteStatus>,
    /// Runtime kills of routes that are no longer in the config (kept in case they return).
    pub orphan_kills: Vec<String>,
    #[serde(default)]
    pub flags: Vec<FlagStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FlagStatus {
    pub key: String,
    pub variants: Vec<VariantStatus>,
    pub default: String,
    pub killed: bool,
    pub kill: Option<Kill>,
    /// Evaluations since cutover started, over all variants.
    pub evaluations: u64,
    #[serde(default)]
    pub ramp: Option<RampStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VariantStatus {
    pub name: String,
    /// Share of targeting keys in the flag's `rollout` in force (its ramp's, when it has one),
    /// in percent.
    pub rollout_percent: Option<f64>,
    /// Evaluations that served this variant since cutover started.
    pub evaluations: u64,
}

/// Whether the runtime kills in effect are saved in `state_file`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct StateFileStatus {
    pub path: String,
    pub saved: bool,
    /// Set while they are not: the latest error, since when, and how many writes failed.
    pub failure: Option<PersistFailure>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ReloadStatus {
    pub at: String,
    pub trigger: String,
    pub ok: bool,
    pub generation: Option<u64>,
    pub errors: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct RouteStatus {
    pub name: String,
    pub stable: String,
    pub killed: bool,
    pub kill: Option<Kill>,
    pub guard: Option<GuardStatus>,
    pub window_seconds: f64,
    pub backends: Vec<BackendStatus>,
    #[serde(default)]
    pub shadow: Option<ShadowSummary>,
    #[serde(default)]
    pub ramp: Option<RampStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct GuardStatus {
    pub max_error_rate: f64,
    pub min_requests: u64,
    pub window_seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    pub name: String,
    /// Percent of the route's traffic in the config.
    pub configured: f64,
    /// Percent actually sent there now (0 or 100 when the route is killed).
    pub effective: f64,
    pub requests: u64,
    pub errors: u64,
    pub requests_per_second: f64,
    pub error_percent: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl Status {
    pub fn of(
        snapshot: &Snapshot,
        config_file: &std::path::Path,
        last: &LastReload,
        persist_failure: Option<&PersistFailure>,
        ramps: &HashMap<(Switch, String), RampLive>,
    ) -> Status {
        let config = &snapshot.config;
        let routes = snapshot
            .routes
            .iter()
            .zip(&config.routes)
            .map(|(route, spec)| RouteStatus {
                name: route.name.to_string(),
                stable: route.stable().backend.name.to_string(),
                killed: route.kill.is_some(),
                kill: route.kill.clone(),
                guard: route.guard.as_ref().map(|g| GuardStatus {
                    max_error_rate: g.max_error_rate,
                    min_requests: g.min_requests,
                    window_seconds: g.window.as_secs_f64(),
                }),
                window_seconds: route.stable().window.window().as_secs_f64(),
                backends: route
                    .targets
                    .iter()
                    .zip(route.effective_shares())
                    .map(|(target, now)| {
                        let totals = target.window.totals();
                        BackendStatus {
                            name: target.backend.name.to_string(),
                            configured: f64::from(target.configured) / 100.0,
                            effective: f64::from(now) / 100.0,
                            requests: totals.requests,
                            errors: totals.errors,
                            requests_per_second: round2(totals.rate()),
                            error_percent: round2(totals.error_percent()),
                            p50_ms: totals.p50.map(|d| round2(d.as_secs_f64() * 1000.0)),
                            p99_ms: totals.p99.map(|d| round2(d.as_secs_f64() * 1000.0)),
                        }
                    })
                    .collect(),
                shadow: route
                    .shadow
                    .as_ref()
                    .map(|shadow| ShadowSummary::of(route, shadow)),
                ramp: ramp_of(spec, &snapshot.overrides).map(|(ramp, progress)| {
                    RampStatus::of(
                        &ramp.plan,
                        progress,
                        ramps.get(&(Switch::Route, spec.name.clone())),
                        route.kill.as_ref(),
                        "route",
                        spec.split[1].1,
                    )
                }),
            })
            .collect();
        Status {
            generation: snapshot.generation,
            config_file: config_file.display().to_string(),
            last_reload: ReloadStatus {
                at: humantime::format_rfc3339_seconds(last.at).to_string(),
                trigger: last.trigger.to_owned(),
                ok: last.result.is_ok(),
                generation: last.result.as_ref().ok().copied(),
                errors: last.result.as_ref().err().cloned().unwrap_or_default(),
            },
            state_file: StateFileStatus {
                path: config.state_file.display().to_string(),
                saved: persist_failure.is_none(),
                failure: persist_failure.cloned(),
            },
            routes,
            flags: config
                .flags
                .iter()
                .zip(snapshot.flag_telemetry.iter())
                .enumerate()
                .map(|(flag_index, ((key, flag), telemetry))| {
                    let in_force = snapshot.flag_in_force(flag_index);
                    let kill = if flag.kill {
                        Some(Kill::in_config())
                    } else {
                        snapshot.overrides.flags.get(key).cloned()
                    };
                    let variants: Vec<VariantStatus> = flag
                        .variants
                        .iter()
                        .zip(&telemetry.served)
                        .enumerate()
                        .map(|(index, (variant, served))| VariantStatus {
                            name: variant.name.clone(),
                            rollout_percent: in_force
                                .rollout
                                .as_ref()
                                .map(|r| f64::from(r.share_of(index)) / 100.0),
                            evaluations: served.load(Ordering::Relaxed),
                        })
                        .collect();
                    let ramp =
                        flag_ramp_of(key, flag, &snapshot.overrides).map(|(ramp, progress)| {
                            RampStatus::of(
                                &ramp.plan,
                                progress,
                                ramps.get(&(Switch::Flag, key.clone())),
                                kill.as_ref(),
                                "flag",
                                ramp.configured,
                            )
                        });
                    FlagStatus {
                        key: key.clone(),
                        default: flag.variants[flag.default].name.clone(),
                        killed: kill.is_some(),
                        kill,
                        ramp,
                        evaluations: variants.iter().map(|v| v.evaluations).sum(),
                        variants,
                    }
                })
                .collect(),
            orphan_kills: snapshot
                .overrides
                .routes
                .keys()
                .filter(|name| snapshot.route(name).is_none())
                .cloned()
                .collect(),
        }
    }

    /// A terminal table, one line per backend.
    pub fn render(&self) -> String {
        let mut out = format!("generation {}", self.generation);
        if self.last_reload.ok {
            out.push_str(&format!(
                ", last reload ok ({} at {})\n",
                self.last_reload.trigger, self.last_reload.at
            ));
        } else {
            out.push_str(&format!(
                ", LAST RELOAD FAILED ({} at {}), still serving generation {}:\n",
                self.last_reload.trigger, self.last_reload.at, self.generation
            ));
            for error in &self.last_reload.errors {
                out.push_str(&format!("  {error}\n"));
            }
        }
        if let Some(failure) = &self.state_file.failure {
            out.push_str(&format!(
                "RUNTIME KILLS NOT SAVED to {} since {} ({} failed writes, retrying): {}\n\
                 a restart now would undo them\n",
                self.state_file.path, failure.since, failure.attempts, failure.error
            ));
        }
        out.push_str(&format!(
            "\n{:<20} {:<28} {:>8} {:>7} {:>9} {:>9}  {}\n",
            "ROUTE", "BACKEND", "SPLIT %", "REQ/S", "ERRORS %", "P99 ms", "STATE"
        ));
        for route in &self.routes {
            let state = match &route.kill {
                Some(kill) => format!(
                    "KILLED by {} {}: {}",
                    kill.by.as_str(),
                    kill.at,
                    kill.reason
                ),
                None => "live".to_owned(),
            };
            for (i, backend) in route.backends.iter().enumerate() {
                let split = if backend.configured == backend.effective {
                    percent(backend.configured)
                } else {
                    format!(
                        "{}→{}",
                        percent(backend.configured),
                        percent(backend.effective)
                    )
                };
                let name = if backend.name == route.stable {
                    format!("{} (stable)", backend.name)
                } else {
                    backend.name.clone()
                };
                out.push_str(&format!(
                    "{:<20} {:<28} {:>8} {:>7.1} {:>9} {:>9}  {}\n",
                    if i == 0 { route.name.as_str() } else { "" },
                    name,
                    split,
                    backend.requests_per_second,
                    if backend.requests == 0 {
                        "-".to_owned()
                    } else {
                        format!("{:.1}", backend.error_percent)
                    },
                    backend.p99_ms.map_or("-".to_owned(), |p| format!("{p:.1}")),
                    if i == 0 { state.as_str() } else { "" },
                ));
            }
        }
        let shadowed: Vec<_> = self
            .routes
            .iter()
            .filter_map(|r| Some((r, r.shadow.as_ref()?)))
            .collect();
        if !shadowed.is_empty() {
            out.push_str(&format!("\n{:<20} {:<28} {}\n", "SHADOW", "TO", "RESULTS"));
            for (route, shadow) in shadowed {
                out.push_str(&format!(
                    "{:<20} {:<28} {}  (cutover diffs {})\n",
                    route.name,
                    format!("{} {}%", shadow.to, percent(shadow.percent)),
                    shadow.describe_counts(),
                    route.name
                ));
            }
        }
        let ramping: Vec<_> = self
            .routes
            .iter()
            .filter_map(|r| Some((r, r.ramp.as_ref()?)))
            .collect();
        let flags_ramping: Vec<_> = self
            .flags
            .iter()
            .filter_map(|f| Some((f, f.ramp.as_ref()?)))
            .collect();
        if !ramping.is_empty() || !flags_ramping.is_empty() {
            out.push_str(&format!("\n{:<20} {}\n", "RAMP", "STEP"));
            for (route, ramp) in ramping {
                out.push_str(&format!(
                    "{:<20} {}  (cutover ramp status {})\n",
                    route.name,
                    ramp.summary(),
                    route.name
                ));
            }
            for (flag, ramp) in flags_ramping {
                out.push_str(&format!(
                    "{:<20} {}  (cutover ramp status --flag {})\n",
                    format!("flag {}", flag.key),
                    ramp.summary(),
                    flag.key
                ));
            }
        }
        if !self.flags.is_empty() {
            out.push_str(&format!(
                "\n{:<28} {:<20} {:>11}  {}\n",
                "FLAG", "DEFAULT", "EVALUATIONS", "STATE"
            ));
            for flag in &self.flags {
                let state = match &flag.kill {
                    Some(kill) => format!(
                        "KILLED by {} {}: {} (everyone gets {})",
                        kill.by.as_str(),
                        kill.at,
                        kill.reason,
                        flag.default
                    ),
                    None => format!("live ({})", flag.describe_variants()),
                };
                out.push_str(&format!(
                    "{:<28} {:<20} {:>11}  {}\n",
                    flag.key, flag.default, flag.evaluations, state
                ));
            }
        }
        for orphan in &self.orphan_kills {
            out.push_str(&format!(
                "(route {orphan} is not in the config but stays killed if it returns)\n"
            ));
        }
        out
    }
}

impl FlagStatus {
    /// `on 25% (1204), off 75% (3611)`: rollout shares when there is a rollout, and how often
    /// each variant was served.
    fn describe_variants(&self) -> String {
        self.variants
            .iter()
            .map(|v| match v.rollout_percent {
                Some(share) => format!("{} {}% ({})", v.name, percent(share), v.evaluations),
                None => format!("{} ({})", v.name, v.evaluations),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

fn percent(value: f64) -> String {
    format_percent((value * 100.0).round() as u32)
}
