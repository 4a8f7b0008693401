//! What changed between two compiled configs, as the lines a reload logs. Pure: it reads
//! two [`Config`]s and knows nothing of how or when a reload happens.

use super::Config;
use crate::bucket::format_percent;

/// One line per routing or flag change, e.g. `payments: legacy 90% → 75%, payments-v2 10% → 25%`
/// (stable backend first).
pub fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut lines = Vec::new();
    let split_of = |config: &Config, index: usize| -> Vec<(String, u32)> {
        config.routes[index]
            .split
            .iter()
            .map(|&(b, share)| (config.backends[b].name.clone(), share))
            .collect()
    };
    for (i, route) in new.routes.iter().enumerate() {
        let Some(j) = old.routes.iter().position(|r| r.name == route.name) else {
            lines.push(format!("route {} added", route.name));
            continue;
        };
        let (before, after) = (split_of(old, j), split_of(new, i));
        let mut changes: Vec<String> = after
            .iter()
            .filter_map(|(backend, share)| {
                let previous = before
                    .iter()
                    .find(|(b, _)| b == backend)
                    .map_or(0, |(_, s)| *s);
                (previous != *share).then(|| {
                    format!(
                        "{backend} {}% → {}%",
                        format_percent(previous),
                        format_percent(*share)
                    )
                })
            })
            .collect();
        changes.extend(
            before
                .iter()
                .filter(|(b, _)| after.iter().all(|(a, _)| a != b))
                .map(|(b, s)| format!("{b} {}% → removed", format_percent(*s))),
        );
        let old_route = &old.routes[j];
        if old_route.kill != route.kill {
            changes.push(format!("kill {} → {}", old_route.kill, route.kill));
        }
        if old_route.matcher != route.matcher {
            changes.push("match changed".to_owned());
        }
        match (&old_route.ramp, &route.ramp) {
            (None, Some(_)) => changes.push("ramp added".to_owned()),
            (Some(_), None) => changes.push("ramp removed: the split applies".to_owned()),
            (Some(a), Some(b)) if a.plan.to != b.plan.to || a.plan.steps != b.plan.steps => {
                changes.push("ramp `to` or steps changed: its schedule restarts".to_owned())
            }
            (Some(a), Some(b)) if a != b => changes.push("ramp gate or every changed".to_owned()),
            _ => {}
        }
        if !changes.is_empty() {
            lines.push(format!("{}: {}", route.name, changes.join(", ")));
        }
    }
    for route in &old.routes {
        if new.routes.iter().all(|r| r.name != route.name) {
            lines.push(format!("route {} removed", route.name));
        }
    }
    for (key, flag) in &new.flags {
        match old.flags.iter().find(|(k, _)| k == key) {
            None => lines.push(format!("flag {key} added")),
            Some((_, f)) if f != flag => lines.push(format!("flag {key} changed")),
            Some(_) => {}
        }
    }
    for (key, _) in &old.flags {
        if new.flags.iter().all(|(k, _)| k != key) {
            lines.push(format!("flag {key} removed"));
        }
    }
    for backend in &new.backends {
        match old.backends.iter().find(|b| b.name == backend.name) {
            None => lines.push(format!("backend {} added", backend.name)),
            Some(b) if b != backend => lines.push(format!("backend {} changed", backend.name)),
            Some(_) => {}
        }
    }
    lines
}

/// Settings read once, when the listeners are bound, that `new` changes: `(what, old, new)`.
/// A reload applies everything else and keeps these as they were until a restart.
pub fn start_time_changes(old: &Config, new: &Config) -> Vec<(&'static str, String, String)> {
    let access_log = |log: Option<&super::AccessLogSettings>| {
        log.map_or_else(
            || "off".to_owned(),
            |log| format!("{} (buffer {})", log.target, log.buffer),
        )
    };
    let flags_listen = |config: &Config| {
        config
            .flags_api
            .as_ref()
            .map_or_else(|| "off".to_owned(), |api| api.listen.to_string())
    };
    let humane = |d: std::time::Duration| humantime::format_duration(d).to_string();
    [
        ("listen", old.listen.to_string(), new.listen.to_string()),
        (
            "admin.listen",
            old.admin.listen.to_string(),
            new.admin.listen.to_string(),
        ),
        ("flags_api.listen", flags_listen(old), flags_listen(new)),
        (
            "client_header_timeout",
            humane(old.client_header_timeout),
            humane(new.client_header_timeout),
        ),
        (
            "client_idle_timeout",
            humane(old.client_idle_timeout),
            humane(new.client_idle_timeout),
        ),
        (
            "max_connections",
            old.max_connections.to_string(),
            new.max_connections.to_string(),
        ),
        (
            "access_log",
            access_log(old.access_log.as_ref()),
            access_log(new.access_log.as_ref()),
        ),
    ]
    .into_iter()
    .filter(|(_, old, new)| old != new)
    .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(yaml: &str) -> Config {
        crate::config::compile_text(Path::new("/tmp/x.yaml"), yaml).expect("valid config")
    }

    const BEFORE: &str = "
backends:
  legacy: { url: http://127.0.0.1:9001 }
  payments-v2: { url: http://127.0.0.1:9002 }
  old: { url: http://127.0.0.1:9003 }
routes:
  - name: payments
    match: { path_prefix: /api/payments }
    split: { legacy: 90, payments-v2: 10 }
  - name: gone
    match: { path_prefix: /gone }
    split: { old: 100 }
flags:
  k:
    variants: { a: 1, b: 2 }
    default: a
  dropped:
    variants: { a: 1 }
    default: a
";

    #[test]
    fn unchanged_config_describes_nothing() {
        assert!(describe_changes(&config(BEFORE), &config(BEFORE)).is_empty());
    }

    #[test]
    fn split_shift_is_one_line_per_route_in_percent() {
        let after = BEFORE.replace("legacy: 90, payments-v2: 10", "legacy: 75, payments-v2: 25");
        assert_eq!(
            describe_changes(&config(BEFORE), &config(&after)),
            ["payments: legacy 90% → 75%, payments-v2 10% → 25%"]
        );
    }

    #[test]
    fn routes_flags_and_backends_in_that_order() {
        let after = "
backends:
  legacy: { url: http://127.0.0.1:9001 }
  payments-v2: { url: http://127.0.0.1:9012 }
  fresh: { url: http://127.0.0.1:9004 }
routes:
  - name: payments
    match: { path_prefix: /api/pay }
    split: { legacy: 100 }
    kill: true
  - name: x
    match: { path_prefix: /x }
    split: { fresh: 100 }
flags:
  k:
    variants: { a: 1, b: 2 }
    default: b
  new:
    variants: { a: 1 }
    default: a
";
        assert_eq!(
            describe_changes(&config(BEFORE), &config(after)),
            [
                "payments: legacy 90% → 100%, payments-v2 10% → removed, kill false → true, match changed",
                "route x added",
                "route gone removed",
                "flag k changed",
                "flag new added",
                "flag dropped removed",
                "backend payments-v2 changed",
                "backend fresh added",
            ]
        );
    }
}
