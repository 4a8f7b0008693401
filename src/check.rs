//! `cutover check`: the config compiler without serving, like `nginx -t`.

use std::fmt::Write as _;
use std::path::Path;

use crate::bucket::format_percent;
use crate::config::{self, Config};
use crate::proxy::routing::{HostMatch, Matcher, PathMatch, StickySource};

/// The report to print, and whether the file is valid.
pub fn check(path: &Path) -> (String, bool) {
    match config::load(path) {
        Ok(config) => (summary(path, &config), true),
        Err(errors) => {
            let mut out = String::new();
            for error in &errors {
                let _ = writeln!(out, "{error}");
            }
            let plural = if errors.len() == 1 { "" } else { "s" };
            let _ = writeln!(out, "{}: {} error{plural}", path.display(), errors.len());
            (out, false)
        }
    }
}

fn summary(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}: ok: {} backend{}, {} route{}, {} flag{}; proxy {}, admin {}",
        path.display(),
        config.backends.len(),
        if config.backends.len() == 1 { "" } else { "s" },
        config.routes.len(),
        if config.routes.len() == 1 { "" } else { "s" },
        config.flags.len(),
        if config.flags.len() == 1 { "" } else { "s" },
        config.listen,
        config.admin.listen,
    );
    if let Some(flags_file) = &config.flags_file {
        let _ = writeln!(out, "  flags also from {}", flags_file.display());
    }
    for route in &config.routes {
        let split: Vec<String> = route
            .split
            .iter()
            .map(|&(b, share)| format!("{} {}%", config.backends[b].name, format_percent(share)))
            .collect();
        let _ = write!(
            out,
            "  {}: {} → {}",
            route.name,
            describe_match(&route.matcher),
            split.join(", ")
        );
        if let Some(sticky) = &route.sticky {
            let _ = write!(out, "; sticky on {}", describe_sticky(sticky));
        }
        if let Some(shadow) = &route.shadow {
            let methods: Vec<&str> = shadow.methods.iter().map(|m| m.as_str()).collect();
            let _ = write!(
                out,
                "; shadow {}% of {} to {}",
                format_percent(shadow.share),
                methods.join("|"),
                config.backends[shadow.to].name
            );
            if let Some(noise) = shadow.noise {
                let _ = write!(out, " (noise from {})", config.backends[noise].name);
            }
        }
        if let Some(ramp) = &route.ramp {
            let gate = &ramp.plan.gate;
            let mut limits = vec![format!("{} requests", gate.min_requests)];
            if let Some(max) = gate.max_error_rate {
                limits.push(format!("errors ≤ {max}%"));
            }
            if let Some(max) = gate.max_latency_ratio {
                limits.push(format!("p99 ≤ {max}× stable's"));
            }
            if let Some(max) = gate.max_mismatch_rate {
                limits.push(format!("mismatches ≤ {max}%"));
            }
            let _ = write!(
                out,
                "; ramp {} {} every {} (gate: {})",
                ramp.plan.to,
                describe_steps(&ramp.plan.steps),
                humantime::format_duration(ramp.plan.every),
                limits.join(", ")
            );
        }
        if route.kill {
            let _ = write!(
                out,
                "; KILLED (all to {})",
                config.backends[route.stable].name
            );
        }
        out.push('\n');
    }
    for (key, flag) in &config.flags {
        let variants: Vec<&str> = flag.variants.iter().map(|v| v.name.as_str()).collect();
        let _ = write!(
            out,
            "  flag {key}: {}; default {}",
            variants.join(", "),
            flag.variants[flag.default].name
        );
        if !flag.rules.is_empty() {
            let plural = if flag.rules.len() == 1 { "" } else { "s" };
            let _ = write!(out, "; {} rule{plural}", flag.rules.len());
        }
        if let Some(rollout) = &flag.rollout {
            let mut lower = 0;
            let shares: Vec<String> = rollout
                .bounds
                .iter()
                .map(|&(variant, upper)| {
                    let share = u32::from(upper - lower);
                    lower = upper;
                    format!("{} {}%", flag.variants[variant].name, format_percent(share))
                })
                .collect();
            let _ = write!(out, "; rollout {}", shares.join(", "));
        }
        if let Some(ramp) = &flag.ramp {
            let _ = write!(
                out,
                "; ramp {} {} every {}",
                ramp.plan.to,
                describe_steps(&ramp.plan.steps),
                humantime::format_duration(ramp.plan.every)
            );
        }
        if flag.kill {
            let _ = write!(out, "; KILLED");
        }
        out.push('\n');
    }
    if !config.flags.is_empty() && config.flags_api.is_none() {
        let _ = writeln!(
            out,
            "warning: flags are defined but no flags_api listener is configured to serve them"
        );
    }
    for warning in &config.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out
}

fn describe_match(matcher: &Matcher) -> String {
    let mut parts = Vec::new();
    match &matcher.path {
        Some(PathMatch::Prefix(p)) => parts.push(format!("{p}*")),
        Some(PathMatch::Exact(p)) => parts.push(p.clone()),
        None => {}
    }
    match &matcher.host {
        Some(HostMatch::Exact(h)) => parts.push(format!("host {h}")),
        Some(HostMatch::Suffix(h)) => parts.push(format!("host *{h}")),
        None => {}
    }
    if !matcher.methods.is_empty() {
        let methods: Vec<&str> = matcher.methods.iter().map(|m| m.as_str()).collect();
        parts.push(methods.join("|"));
    }
    for (name, value) in &matcher.headers {
        parts.push(format!("{name}: {}", value.to_str().unwrap_or("…")));
    }
    parts.join(" ")
}

fn describe_sticky(sticky: &StickySource) -> String {
    match sticky {
        StickySource::Header(name) => format!("header {name}"),
        StickySource::Cookie(name) => format!("cookie {name}"),
        StickySource::Query(name) => format!("query {name}"),
        StickySource::ClientIp => "client ip".to_owned(),
    }
}

/// `1% → 5% → 25%`.
fn describe_steps(steps: &[u32]) -> String {
    steps
        .iter()
        .map(|&s| format!("{}%", format_percent(s)))
        .collect::<Vec<_>>()
        .join(" → ")
}
